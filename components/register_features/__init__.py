"""The register_features step."""
