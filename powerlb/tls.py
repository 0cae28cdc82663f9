"""TLS towards backends: the trust root, one verifying connection creator per https:// backend,
and short reasons for handshake failures.

Certificate and hostname verification are always on: against the system
trust store, or against the CAs of ``backend-ca-file`` (a PEM file) for
private CAs. A backend given by IP address is verified against the IP
addresses in its certificate (service_identity). pyOpenSSL and
service_identity come with the ``tls`` install extra and are imported only
when a TLS backend or CA file is used, so http-only setups do not need them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure

from powerlb.backend import Backend

if TYPE_CHECKING:  # twisted.internet.ssl needs pyOpenSSL (the tls extra)
    from twisted.internet._sslverify import IOpenSSLTrustRoot

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----"
)

TLS_EXTRA_HINT = "install TLS support with pip install 'powerlb[tls]'"


def pem_certificates(data: bytes) -> List[bytes]:
    """The PEM ``CERTIFICATE`` blocks in ``data``, in order (anything between them is ignored)."""
    return _PEM_CERTIFICATE.findall(data)


def load_ca_file(path: str) -> List[Any]:
    """The CA certificates (``twisted.internet.ssl.Certificate``) in the PEM file ``path``.

    Raises ValueError saying what is wrong and how to fix it: the file cannot
    be read, holds no PEM certificate, or a certificate does not parse.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"cannot read {path!r} ({reason}); give the path of a readable PEM file") from None
    blocks = pem_certificates(data)
    if not blocks:
        raise ValueError(
            f"{path!r} holds no PEM certificate; give a file with '-----BEGIN CERTIFICATE-----' blocks"
        )
    try:
        from OpenSSL.crypto import Error as OpenSSLError
        from twisted.internet.ssl import Certificate
    except ImportError:
        raise ValueError(f"a CA file needs pyOpenSSL; {TLS_EXTRA_HINT}") from None
    certificates = []
    for number, block in enumerate(blocks, start=1):
        try:
            certificates.append(Certificate.loadPEM(block))
        except (OpenSSLError, ValueError):
            raise ValueError(
                f"certificate {number} in {path!r} is not a valid PEM certificate; replace it"
            ) from None
    return certificates


def tls_available() -> bool:
    """Whether Twisted can make verifying TLS client connections (pyOpenSSL and service_identity)."""
    try:
        import service_identity  # noqa: F401
        from twisted.internet import ssl  # noqa: F401
    except ImportError:
        return False
    return True


class BackendTLS:
    """TLS client settings of one powerlb: the trust root, and a connection creator per backend host.

    The trust root is the CAs of ``ca_file``, or the system trust store when
    it is None; it is built when the first https backend needs it. Creators
    are cached by host (each one holds an OpenSSL context).
    """

    def __init__(self, ca_file: Optional[str] = None) -> None:
        self.ca_file = ca_file
        self._trust_root: Optional[IOpenSSLTrustRoot] = None
        self._creators: Dict[str, IOpenSSLClientConnectionCreator] = {}

    def creator_for(self, backend: Backend) -> Optional[IOpenSSLClientConnectionCreator]:
        """The ``IOpenSSLClientConnectionCreator`` for ``backend``, or None for an http:// backend."""
        if backend.scheme != "https":
            return None
        creator = self._creators.get(backend.host)
        if creator is None:
            from twisted.internet.ssl import optionsForClientTLS

            creator = self._creators[backend.host] = optionsForClientTLS(
                backend.host, trustRoot=self._trust(), acceptableProtocols=[b"http/1.1"]
            )
        return creator

    def _trust(self) -> IOpenSSLTrustRoot:
        if self._trust_root is None:
            from twisted.internet import ssl

            if self.ca_file is None:
                self._trust_root = ssl.platformTrust()
            else:
                self._trust_root = ssl.trustRootFromCertificates(load_ca_file(self.ca_file))
        return self._trust_root


def tls_failure(reason: Failure) -> Optional[str]:
    """A short reason when ``reason`` is a failed TLS handshake or certificate check, else None."""
    if reason.check("service_identity.exceptions.VerificationError"):
        return "backend certificate does not match its host name"
    if reason.check("OpenSSL.SSL.Error"):
        details = [
            str(entry[-1])
            for entry in (reason.value.args[0] if reason.value is not None and reason.value.args else [])
            if isinstance(entry, tuple) and entry
        ]
        return "TLS handshake with backend failed" + (f": {'; '.join(details)}" if details else "")
    return None
