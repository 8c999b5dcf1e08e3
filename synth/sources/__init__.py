"""Identity sources of the face model (calibration of the Anny infant prior)."""
