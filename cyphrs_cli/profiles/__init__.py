"""Certificate profiles as data: built-in TOML files plus ``profiles/*.toml`` in the CA home."""
