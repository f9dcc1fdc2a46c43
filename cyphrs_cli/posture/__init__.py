"""Certificate posture (``cyphrs scan``): where certificates come from (``sources``), what
is wrong with them (``rules``) and one number for the whole set (``score``).
"""
