"""Dataset records and file formats (readers of structure files and of the MP-ALOE / MatPES documents)."""
