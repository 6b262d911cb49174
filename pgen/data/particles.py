"""Particle transport in liquid argon for the synthetic LArTPC generator (``pgen.data.synth``).

Units are cm and MeV. Transport writes energy deposits as straight 3D segments into a
``Deposits`` collector; ``pgen.data.detector`` turns them into charge on a wire plane. The physics:

- **tracks** (muon, charged pion, proton): 3D polylines in 3 mm steps. Kinetic energy against
  residual range ``R`` follows a power law fitted to argon stopping powers,
  ``dE/dx = 18 MeV/cm * (R M_p / M)^-0.42`` (the Bragg peak at the stopping end), floored at
  the minimum-ionising 2.1 MeV/cm, so a 100 MeV proton runs 7.5 cm, a 200 MeV one 25 cm and a
  1 GeV muon 4.6 m. Each step is deflected by multiple scattering with the Highland formula
  (X0 = 14 cm). Knock-on electrons (delta rays) above 3 MeV are drawn from the 1/T^2 spectrum
  at the Bethe rate.
- **electromagnetic cascades**: electrons step (0.5-1 cm, by energy) losing 2.1 MeV/cm,
  scattering (Highland) and radiating bremsstrahlung photons (complete-screening spectrum, mean
  loss E/X0); photons fly an exponential gap (mean 18 cm = 9/7 X0 at high energy, shorter below
  7 MeV), then pair-produce or Compton-scatter; positrons annihilate at rest. The branching
  cascade spreads to the Moliere radius (X0 * 21 MeV / 32 MeV ~ 9 cm) by itself, and low-energy
  Compton electrons make the isolated blips around real showers. All particles of a cascade
  step together as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

X0 = 14.0  # radiation length of liquid argon, cm
MIP = 2.1  # dE/dx of a minimum-ionising particle, MeV/cm
GAP = 18.0  # high-energy photon mean free path (pair production), 9/7 X0, cm
STEP = 0.3  # track step, cm (one wire pitch)
ME, MMU, MPI, MP, MPI0 = 0.511, 105.66, 139.57, 938.27, 134.98  # masses, MeV
MASS = {"muon": MMU, "pion": MPI, "proton": MP}
BRAGG_A, BRAGG_B = 18.0, 0.42  # proton dE/dx = A * R^-B, R residual range in cm (PSTAR-like ranges)
TRACK, SHOWER, MICHEL, DELTA = 1, 2, 3, 4  # semantic labels (0 is background)
E_CUT = 1.0  # electrons below this stop where they are (range < 4 mm), MeV
K_MIN = 0.2  # bremsstrahlung photons below this are not made, MeV
GAMMA_CUT = 0.25  # photons below this are absorbed where they next interact, MeV
DELTA_MIN = 3.0  # delta rays above this kinetic energy are made, MeV
BETHE_K = 0.0964  # 0.1535 MeV cm^2/g * Z/A (0.45) * density (1.396 g/cm^3): MeV/cm
MICHEL_END = 52.8  # Michel spectrum end point, MeV
MAX_ITER = 600  # cascade iterations (a 1 GeV shower needs ~150)


@dataclass
class Deposits:
    """Energy deposits (MeV) as segments p0 -> p1 in cm (a point where p0 == p1), with their labels."""

    p0: list = field(default_factory=list)
    p1: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    label: list = field(default_factory=list)

    def add(self, p0, p1, energy, label) -> None:
        if len(energy):
            self.p0.append(p0)
            self.p1.append(p1)
            self.energy.append(energy)
            self.label.append(label if np.ndim(label) else np.full(len(energy), label, dtype=np.uint8))

    def arrays(self):
        if not self.energy:
            z3 = np.zeros((0, 3))
            return z3, z3, np.zeros(0), np.zeros(0, dtype=np.uint8)
        return (np.concatenate(self.p0), np.concatenate(self.p1), np.concatenate(self.energy), np.concatenate(self.label))


@dataclass
class Bunch:
    """Particles of one kind moving together: positions, unit directions, kinetic energies, labels,
    roots (the index of the particle record they descend from) and, for electrons, which are positrons."""

    pos: np.ndarray
    dir: np.ndarray
    energy: np.ndarray
    label: np.ndarray
    root: np.ndarray
    positron: np.ndarray | None = None

    def __post_init__(self):
        if self.positron is None:
            self.positron = np.zeros(len(self.energy), dtype=bool)

    @staticmethod
    def empty() -> "Bunch":
        return Bunch(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.uint8), np.zeros(0, np.int64))

    @staticmethod
    def of(items) -> "Bunch":
        """From ``[(pos, dir, energy, label, root), ...]``."""
        if not items:
            return Bunch.empty()
        pos, dirs, energy, label, root = zip(*items)
        return Bunch(np.array(pos, float), _unit(np.array(dirs, float)), np.array(energy, float),
                     np.array(label, np.uint8), np.array(root, np.int64))

    def __len__(self) -> int:
        return len(self.energy)

    def take(self, mask) -> "Bunch":
        return Bunch(*(a[mask] for a in self._fields()))

    def __add__(self, other: "Bunch") -> "Bunch":
        if not len(other):
            return self
        if not len(self):
            return other
        return Bunch(*(np.concatenate([a, b]) for a, b in zip(self._fields(), other._fields())))

    def _fields(self):
        return (self.pos, self.dir, self.energy, self.label, self.root, self.positron)


# --------------------------------------------------------------------------- geometry


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to unit vectors ``d`` ([n, 3] or [3]) and to each other
    (the branchless construction of Duff et al., JCGT 2017)."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    s = np.copysign(1.0, z)
    a = -1.0 / (s + z)
    b = x * y * a
    u = np.stack([1.0 + s * x * x * a, s * b, -s * x], axis=-1)
    v = np.stack([b, s + y * y * a, -y], axis=-1)
    return u, v


def turn(d: np.ndarray, theta, phi) -> np.ndarray:
    """Unit vectors at polar angle ``theta`` and azimuth ``phi`` around unit vectors ``d`` ([n, 3])."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    s = np.copysign(1.0, z)
    a = -1.0 / (s + z)
    b = x * y * a
    ct, st = np.cos(theta), np.sin(theta)
    p, q = st * np.cos(phi), st * np.sin(phi)
    out = np.empty_like(d)
    out[:, 0] = ct * x + p * (1.0 + s * x * x * a) + q * b
    out[:, 1] = ct * y + p * s * b + q * (s + y * y * a)
    out[:, 2] = ct * z - p * s * x - q * y
    return out


def isotropic(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    cos = rng.uniform(-1, 1, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    sin = np.sqrt(1 - cos**2)
    return np.stack([sin * np.cos(phi), sin * np.sin(phi), cos], axis=-1)


def highland(kinetic: np.ndarray, mass: float, step: np.ndarray) -> np.ndarray:
    """Multiple-scattering angle (rad, per plane) after ``step`` cm of argon."""
    p = np.sqrt(kinetic * (kinetic + 2 * mass))
    beta_p = p * p / (kinetic + mass)
    x = step / X0
    return np.minimum(13.6 / np.maximum(beta_p, 1e-3) * np.sqrt(x) * (1 + 0.038 * np.log(x)), 1.5)


# --------------------------------------------------------------------------- range and energy


def _bragg(mass: float) -> tuple[float, float, float]:
    """(c, rc, tc): T = c R^(1-B) below the range rc where dE/dx falls to MIP, and T there."""
    k = MP / mass
    c = BRAGG_A * k ** (-BRAGG_B) / (1 - BRAGG_B)
    rc = (BRAGG_A / MIP) ** (1 / BRAGG_B) / k
    return c, rc, c * rc ** (1 - BRAGG_B)


def kinetic_energy(residual_range, mass: float) -> np.ndarray:
    """Kinetic energy (MeV) of a particle of ``mass`` that stops after ``residual_range`` cm."""
    c, rc, _ = _bragg(mass)
    r = np.maximum(np.asarray(residual_range, dtype=np.float64), 0)
    return c * np.minimum(r, rc) ** (1 - BRAGG_B) + MIP * np.maximum(r - rc, 0)


def csda_range(kinetic: float, mass: float) -> float:
    """Range (cm) of a particle of ``kinetic`` MeV: the inverse of ``kinetic_energy``."""
    c, rc, tc = _bragg(mass)
    if kinetic <= tc:
        return float((kinetic / c) ** (1 / (1 - BRAGG_B)))
    return float(rc + (kinetic - tc) / MIP)


# --------------------------------------------------------------------------- tracks


@dataclass
class TrackResult:
    end: np.ndarray  # last point, cm
    end_dir: np.ndarray
    stopped: bool  # ranged out (rather than cut at the edge of the world)
    deltas: list  # [(pos, dir, kinetic), ...] knock-on electrons to hand to the cascade


def track(rng: np.random.Generator, dep: Deposits, start, direction, kinetic: float, mass: float,
          max_length: float, *, deltas: bool = True) -> TrackResult:
    """Transport one heavy charged particle; its ionisation goes into ``dep`` with label TRACK."""
    start = np.asarray(start, float)
    d0 = _unit(np.asarray(direction, float))
    r0 = csda_range(kinetic, mass)
    length = min(r0, max_length)
    n = max(1, int(np.ceil(length / STEP)))
    s = np.linspace(0.0, length, n + 1)
    t = kinetic_energy(r0 - s, mass)
    energy = t[:-1] - t[1:]
    ds = np.diff(s)
    t_mid = 0.5 * (t[:-1] + t[1:])
    theta0 = highland(t_mid, mass, np.maximum(ds, 1e-3))
    # random walk of the direction in the tangent plane of d0, mapped back onto the sphere
    kicks = rng.normal(size=(n, 2)) * theta0[:, None]
    walk = np.concatenate([np.zeros((1, 2)), np.cumsum(kicks, axis=0)[:-1]])
    angle = np.hypot(walk[:, 0], walk[:, 1])
    phi = np.arctan2(walk[:, 1], walk[:, 0])
    u, v = basis(d0)
    dirs = np.cos(angle)[:, None] * d0 + np.sin(angle)[:, None] * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v)
    pos = start + np.concatenate([np.zeros((1, 3)), np.cumsum(dirs * ds[:, None], axis=0)])
    dep.add(pos[:-1], pos[1:], energy, TRACK)
    out = []
    if deltas:
        out = _deltas(rng, pos, dirs, ds, t_mid, mass)
    return TrackResult(pos[-1], dirs[-1], r0 <= max_length, out)


def _deltas(rng, pos, dirs, ds, t_mid, mass) -> list:
    gamma = 1 + t_mid / mass
    beta2 = 1 - 1 / gamma**2
    tmax = 2 * ME * beta2 * gamma**2 / (1 + 2 * gamma * ME / mass + (ME / mass) ** 2)
    tmax = np.minimum(tmax, 0.5 * t_mid)
    rate = BETHE_K / beta2 * np.maximum(1 / DELTA_MIN - 1 / np.maximum(tmax, DELTA_MIN), 0)
    counts = rng.poisson(rate * ds)
    k = np.repeat(np.arange(len(ds)), counts)
    if not len(k):
        return []
    w = rng.random(len(k))
    tk = 1 / (1 / DELTA_MIN - w * (1 / DELTA_MIN - 1 / tmax[k]))  # 1/T^2 spectrum
    p = np.sqrt(t_mid[k] * (t_mid[k] + 2 * mass))
    p_delta = np.sqrt(tk * (tk + 2 * ME))
    cos = np.clip(tk / p_delta * (t_mid[k] + mass + ME) / p, -1, 1)
    d = turn(dirs[k], np.arccos(cos), rng.uniform(0, 2 * np.pi, len(k)))
    at = pos[k] + dirs[k] * (ds[k] * rng.random(len(k)))[:, None]
    return list(zip(at, d, tk))


def michel_energy(rng: np.random.Generator) -> float:
    """Kinetic energy of a Michel electron: x^2 (3 - 2x) spectrum up to 52.8 MeV."""
    while True:
        x, y = rng.random(2)
        if 2 * y <= 6 * x * x - 4 * x**3:
            return MICHEL_END * x


def pi0_photons(rng: np.random.Generator, kinetic: float, direction) -> list[tuple[float, np.ndarray]]:
    """The two photons of a neutral pion of ``kinetic`` MeV: isotropic decay, boosted."""
    e = kinetic + MPI0
    gamma = e / MPI0
    beta = np.sqrt(1 - 1 / gamma**2)
    star = isotropic(rng) * (MPI0 / 2)
    d = _unit(np.asarray(direction, float))
    u, v = basis(d)
    out = []
    for sign in (1, -1):
        px, py, pz = sign * star
        energy = gamma * (MPI0 / 2 + beta * pz)
        pz_lab = gamma * (pz + beta * MPI0 / 2)
        out.append((float(energy), _unit(px * u + py * v + pz_lab * d)))
    return out


# --------------------------------------------------------------------------- electromagnetic cascades


def cascade(rng: np.random.Generator, dep: Deposits, electrons: Bunch, photons: Bunch, centre, radius: float,
            n_roots: int) -> np.ndarray:
    """Transport electrons and photons (and everything they make) to the end; deposits keep each
    particle's label. Particles leaving the sphere (``centre``, ``radius``) are dropped.
    Returns, per root index, the number of electron tracks (branches) the cascade followed."""
    centre = np.asarray(centre, float)
    branches = np.bincount(electrons.root, minlength=n_roots)
    for _ in range(MAX_ITER):
        if not len(electrons) and not len(photons):
            break
        new_photons = Bunch.empty()
        if len(electrons):
            electrons, new_photons = _electron_step(rng, dep, electrons)
        if len(photons):
            photons, new_electrons = _photon_step(rng, dep, photons, centre, radius)
            branches += np.bincount(new_electrons.root, minlength=n_roots)
            electrons = electrons + new_electrons
        photons = photons + new_photons
        far = ((electrons.pos - centre) ** 2).sum(axis=1) > radius * radius
        if far.any():
            electrons = electrons.take(~far)
    return branches


def _electron_step(rng, dep: Deposits, e: Bunch) -> tuple[Bunch, Bunch]:
    energy = e.energy
    n = len(energy)
    u = rng.random((5, n))  # brem: rate, energy, acceptance; scattering: angle, azimuth
    ds = np.clip(0.05 * energy, 0.5, 1.0)  # cm; 1 cm keeps the brem rate below 1 per step
    last = energy - MIP * ds < E_CUT  # ranges out within this step
    ds[last] = energy[last] / MIP
    ion = np.minimum(MIP * ds, energy)
    end = e.pos + e.dir * ds[:, None]
    dep.add(e.pos, end, ion, e.label)
    energy = energy - ion
    # bremsstrahlung, complete-screening spectrum dN/dk = (ds/X0) (4/3 - 4/3 y + y^2) / k, y = k/E:
    # 1/k drawn, kept with probability (1 - y + 3/4 y^2); the mean loss is E ds / X0
    e_kin = np.maximum(energy, K_MIN)
    log_e = np.log(e_kin / K_MIN)
    k = K_MIN * np.exp(u[1] * log_e)
    y = k / e_kin
    emit = (u[0] < ds * (4 / 3 / X0) * log_e) & (u[2] < 1 - y + 0.75 * y * y) & ~last
    photons = Bunch(end[emit], e.dir[emit], k[emit], e.label[emit], e.root[emit])
    energy[emit] -= k[emit]
    stop = ~last & (energy < E_CUT)
    dep.add(end[stop], end[stop], energy[stop], e.label[stop])
    alive = ~(last | stop)
    gone = ~alive & e.positron  # a stopped positron annihilates: two 511 keV photons back to back
    if gone.any():
        d = isotropic(rng, int(gone.sum()))
        photons = photons + Bunch(np.concatenate([end[gone]] * 2), np.concatenate([d, -d]), np.full(2 * len(d), ME),
                                  np.concatenate([e.label[gone]] * 2), np.concatenate([e.root[gone]] * 2))
    # multiple scattering: Rayleigh-distributed angle of Highland width
    a = energy[alive]
    theta = highland(a, ME, ds[alive]) * np.sqrt(-2 * np.log1p(-u[3, alive]))
    dirs = turn(e.dir[alive], np.minimum(theta, np.pi), 2 * np.pi * u[4, alive])
    return Bunch(end[alive], dirs, a, e.label[alive], e.root[alive], e.positron[alive]), photons


def _photon_step(rng, dep: Deposits, g: Bunch, centre, radius) -> tuple[Bunch, Bunch]:
    """Every photon flies to its next interaction: absorption, pair production or Compton scattering."""
    energy = g.energy
    n = len(energy)
    u = rng.random((4, n))  # flight, process, Compton energy, azimuth
    pos = g.pos + g.dir * (-_free_path(energy) * np.log1p(-u[0]))[:, None]
    inside = ((pos - centre) ** 2).sum(axis=1) < radius * radius
    absorbed = inside & (energy < GAMMA_CUT)
    if absorbed.any():
        dep.add(pos[absorbed], pos[absorbed], energy[absorbed], g.label[absorbed])
    p_pair = np.clip(np.log(np.maximum(energy, 1e-9) / 1.5) * (1 / np.log(40.0)), 0, 1)
    pair = inside & ~absorbed & (u[1] < p_pair)
    compton = inside & ~absorbed & ~pair
    electrons, photons = Bunch.empty(), Bunch.empty()
    if pair.any():
        # pair production: the energy above 2 m_e shared by e- and e+, nearly along the photon
        e, m = energy[pair], int(pair.sum())
        t = e - 2 * ME
        f = rng.uniform(0.05, 0.95, m)
        d = np.concatenate([g.dir[pair]] * 2)
        d = turn(d, rng.rayleigh(np.concatenate([ME / np.maximum(e, 1.0)] * 2)), rng.uniform(0, 2 * np.pi, 2 * m))
        electrons = Bunch(np.concatenate([pos[pair]] * 2), d, np.concatenate([f * t, (1 - f) * t]),
                          np.concatenate([g.label[pair]] * 2), np.concatenate([g.root[pair]] * 2),
                          np.repeat([False, True], m))
    if compton.any():
        # Compton scattering: scattered photon keeps a fraction eps in [1/(1+2k), 1], density ~1/eps
        e = energy[compton]
        kk = e / ME
        eps = (1 + 2 * kk) ** -u[2, compton]
        e_out = eps * e
        cos = np.clip(1 - (1 / eps - 1) / kk, -1, 1)
        d_out = turn(g.dir[compton], np.arccos(cos), 2 * np.pi * u[3, compton])
        t_e = e - e_out
        c_pos, c_label, c_root = pos[compton], g.label[compton], g.root[compton]
        low = t_e < E_CUT  # the electron stops within a pixel
        dep.add(c_pos[low], c_pos[low], t_e[low], c_label[low])
        hi = ~low
        if hi.any():
            d_e = _unit(e[hi, None] * g.dir[compton][hi] - e_out[hi, None] * d_out[hi] + 1e-12)
            electrons = electrons + Bunch(c_pos[hi], d_e, t_e[hi], c_label[hi], c_root[hi])
        # a scattered photon below the cut is absorbed where it next interacts: do it now
        soft = e_out < GAMMA_CUT
        if soft.any():
            at = c_pos[soft] + d_out[soft] * (-_free_path(e_out[soft]) * np.log1p(-rng.random(int(soft.sum()))))[:, None]
            keep = ((at - centre) ** 2).sum(axis=1) < radius * radius
            dep.add(at[keep], at[keep], e_out[soft][keep], c_label[soft][keep])
            hard = ~soft
            c_pos, d_out, e_out, c_label, c_root = c_pos[hard], d_out[hard], e_out[hard], c_label[hard], c_root[hard]
        photons = Bunch(c_pos, d_out, e_out, c_label, c_root)
    return photons, electrons


def _free_path(energy: np.ndarray) -> np.ndarray:
    """Photon mean free path in argon, cm: 9/7 X0 for pair production, shorter below ~7 MeV (Compton)."""
    return np.minimum(GAP, 11.0 * np.sqrt(np.sqrt(energy)))
