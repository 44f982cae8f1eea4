"""Templates the suite renders into cluster objects (package data of custom_ca_conformance)."""
