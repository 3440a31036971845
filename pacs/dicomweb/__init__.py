"""DICOMweb (PS3.18): QIDO-RS search, WADO-RS and WADO-URI retrieval, STOW-RS storage."""
