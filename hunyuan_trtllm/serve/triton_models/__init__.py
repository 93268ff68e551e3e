"""The ``model.py`` files of the generated Triton repositories, copied verbatim (never imported here)."""
