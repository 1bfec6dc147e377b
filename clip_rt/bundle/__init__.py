"""The bundle: manifest format and validation, the model store, the catalogue, checksum verification."""
