"""Datasets: the pgen HDF5 store, built-in datasets, importers and the synthetic LArTPC generator."""
