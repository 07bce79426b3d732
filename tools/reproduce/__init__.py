"""What reproducing the published Re-Align TDS pairs needs besides tdsdist (docs/reproducing.md)."""
