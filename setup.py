"""Installs powerlb and its twistd plugin (twisted/plugins/powerlb_plugin.py)."""

from pathlib import Path

from setuptools import setup

setup(
    name="powerlb",
    version="0.1.0",
    description="HTTP load balancer and caching reverse proxy on Twisted",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # twisted/plugins has no __init__.py on purpose: listing it here ships only
    # powerlb_plugin.py into Twisted's plugin directory.
    packages=["powerlb", "twisted.plugins"],
    package_data={"powerlb": ["dashboard.html"]},
    install_requires=[
        "twisted>=22.10",
        "treq>=22.1",
        "PyYAML>=5.4",
        "zope.interface>=5",
        "prometheus_client>=0.12",
    ],
    extras_require={
        "bench": ["matplotlib"],
        # TLS listeners and https:// backends (pyOpenSSL, service_identity for hostname checks).
        "tls": ["twisted[tls]>=22.10"],
        # TLS listeners that also speak HTTP/2 (negotiated with ALPN).
        "http2": ["twisted[tls,http2]>=22.10"],
        # A Redis (or Valkey) shared by several instances: second cache tier and change bus.
        "redis": ["txredisapi>=1.4.7"],
        "test": [
            "pytest>=7",
            "pytest-twisted>=1.13",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "ruff",
            # Type checks (`mypy`, configured in pyproject.toml): CPython only (mypy's compiled
            # dependencies have no PyPy wheels).
            "mypy>=1.8; platform_python_implementation == 'CPython'",
            "mypy-zope>=1.0; platform_python_implementation == 'CPython'",
            "types-PyYAML; platform_python_implementation == 'CPython'",
            "selenium>=4.11",
            "twisted[tls,http2]>=22.10",
            "txredisapi>=1.4.7",
            # A real WebSocket client and server for the tunnel tests (tests/test_tunnel_e2e.py).
            "websockets>=13",
        ],
    },
    entry_points={
        "console_scripts": ["powerlb-demo-backends=powerlb.demo:main", "powerlb-ctl=powerlb.ctl:main"]
    },
)
