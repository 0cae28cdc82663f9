"""Installs powerlb and its twistd plugin (twisted/plugins/powerlb_plugin.py).

The version is read from powerlb/_version.py (its one home) without importing powerlb.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"$', (HERE / "powerlb" / "_version.py").read_text(encoding="utf-8"), re.M
).group(1)

#: The project's home; the other project URLs are below it.
HOME = "https://github.com/powerlb/powerlb"
#: PyPy 3.9 (Debian's pypy3), which the newest cryptography releases have no wheels for.
PYPY39 = 'platform_python_implementation == "PyPy" and python_version < "3.10"'
#: Twisted with TLS (pyOpenSSL, service_identity) and HTTP/2 (h2): a plain install speaks h2 on TLS.
TWISTED = "twisted[tls,http2]>=22.10"

setup(
    name="powerlb",
    version=VERSION,
    description="HTTP load balancer and caching reverse proxy on Twisted",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license_expression="MIT",
    license_files=["LICENSE"],
    url=HOME,
    project_urls={
        "Documentation": f"{HOME}#readme",
        "Configuration reference": f"{HOME}/blob/main/docs/configuration.md",
        "Deployment": f"{HOME}/blob/main/docs/deploy.md",
        "Source": HOME,
        "Issues": f"{HOME}/issues",
    },
    keywords=["load balancer", "reverse proxy", "http cache", "http2", "twisted"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: No Input/Output (Daemon)",
        "Framework :: Twisted",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
        "Topic :: Internet :: Proxy Servers",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
        "Typing :: Typed",
    ],
    python_requires=">=3.9",
    # twisted/plugins has no __init__.py on purpose: listing it here ships only
    # powerlb_plugin.py into Twisted's plugin directory.
    packages=[*find_packages(include=["powerlb", "powerlb.*"]), "twisted.plugins"],
    package_data={"powerlb": ["*.html", "py.typed"]},
    install_requires=[
        TWISTED,
        "treq>=22.1",
        "PyYAML>=5.4",
        "zope.interface>=5",
        "prometheus_client>=0.12",
        # On PyPy 3.9, cryptography's last release with a wheel, so that it is never built from
        # source (that needs Rust and OpenSSL headers), and the last pyOpenSSL that accepts it
        # (saves pip a long backtrack). CPython takes the newest of both.
        f"cryptography<=43.0.3; {PYPY39}",
        f"pyOpenSSL<=25.1.0; {PYPY39}",
    ],
    extras_require={
        "bench": ["matplotlib"],
        # Old names: TLS and HTTP/2 are part of every install now.
        "tls": [],
        "http2": [],
        # A Redis (or Valkey) shared by several instances: second cache tier and change bus.
        "redis": ["txredisapi>=1.4.7"],
        "test": [
            "pytest>=7",
            "pytest-twisted>=1.13",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "h11>=0.14",
            "ruff",
            # Type checks (`mypy`, configured in pyproject.toml): CPython only (mypy's compiled
            # dependencies have no PyPy wheels).
            "mypy>=1.8; platform_python_implementation == 'CPython'",
            "mypy-zope>=1.0; platform_python_implementation == 'CPython'",
            "types-PyYAML; platform_python_implementation == 'CPython'",
            "selenium>=4.11",
            "build>=1",
            "txredisapi>=1.4.7",
            # A real WebSocket client and server for the tunnel tests (tests/test_tunnel_e2e.py).
            "websockets>=13",
        ],
    },
    entry_points={
        "console_scripts": ["powerlb-demo-backends=powerlb.demo:main", "powerlb-ctl=powerlb.ctl:main"]
    },
)
