"""Sphinx configuration of neve's documentation: `make docs` builds it, warnings as errors."""

import os

import neve

project = "neve"
author = "the neve authors"
copyright = "2026, the neve authors"
release = neve.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = True
# "Attributes:" sections as :ivar: fields, so dataclass fields are not described twice
napoleon_use_ivar = True
# Avalanche and torch types in signatures are not cross-referenced (their sites are not offline)
nitpicky = False

# MathJax 3 shipped with the site (PyPI's sphinx-mathjax-offline copies it into _static/mathjax):
# the equations render without a network. NEVE_MATHJAX points at another copy instead
# (MathJax 2, Debian's libjs-mathjax:
# file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML)
if not os.environ.get("NEVE_MATHJAX"):
    extensions.append("sphinx-mathjax-offline")
else:
    mathjax_path = os.environ["NEVE_MATHJAX"]
    myst_update_mathjax = False  # MyST's configuration is MathJax 3's
    mathjax2_config = {"tex2jax": {"processClass": "math", "processEscapes": True}}

html_theme = "furo"
html_title = f"neve {release}"
html_static_path = ["_static"]
html_css_files = ["neve.css"]
