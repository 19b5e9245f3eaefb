"""The paper's architecture: layers, blocks (forms a/b/c, shortcuts), the model, the zoo's spec table, form conversion, BN folding, Table 2's design rule and complexity counting."""
