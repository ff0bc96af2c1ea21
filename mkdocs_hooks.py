"""mkdocs hooks for the xviz site (named in mkdocs.yml's ``hooks``).

Docstrings use Sphinx roles (``:func:`x```, ``:class:`~a.B```); mkdocstrings renders them as text
followed by code. The hook drops the role (and a leading ``~``), leaving the name as code.
"""

import re

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj|const|py:\w+):(<code>)~?")


def on_page_content(html, page, config, files):
    return ROLE.sub(r"\1", html)
