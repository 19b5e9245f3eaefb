"""The cardinality / width / depth study (Tables 3 and 4, Figure 7) and its report."""
