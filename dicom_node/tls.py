"""DICOM TLS (PS3.15 B.1 "Basic TLS Secure Transport Connection Profile"): SSL contexts.

The server context requires TLS 1.2+ and, by default, a client certificate signed by the
configured CA (mutual authentication, as DICOM TLS deployments do). The client context verifies
the destination's certificate (configured CA or the system store) and may present a client
certificate.
"""

from __future__ import annotations

import logging
import ssl

from dicom_node.config import TLSClientConfig, TLSServerConfig
from dicom_node.errors import NodeConfigError

logger = logging.getLogger(__name__)


def server_context(cfg: TLSServerConfig) -> ssl.SSLContext:
    """SSL context for the node's listening socket.

    Args:
        cfg: Enabled TLS settings (certificate, key, CA of client certificates).

    Returns:
        A server-side context (TLS >= 1.2; CERT_REQUIRED when ``require_client_cert``).

    Raises:
        NodeConfigError: TLS disabled, or a file missing or not a valid PEM certificate/key.
    """
    if not cfg.enabled:
        raise NodeConfigError("tls.enabled is false: no server TLS context to build")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cfg.cert_file), keyfile=str(cfg.key_file))
        if cfg.ca_file is not None:
            ctx.load_verify_locations(cafile=str(cfg.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise NodeConfigError(
            f"tls: cannot load cert_file={cfg.cert_file} key_file={cfg.key_file} ca_file={cfg.ca_file}: {exc}"
        ) from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
    if cfg.ca_file is None:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(cfg: TLSClientConfig) -> ssl.SSLContext:
    """SSL context for associations the node opens to a destination.

    Raises:
        NodeConfigError: a configured file is missing or invalid.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if cfg.ca_file is not None:
            ctx.load_verify_locations(cafile=str(cfg.ca_file))
        if cfg.cert_file is not None:
            ctx.load_cert_chain(certfile=str(cfg.cert_file), keyfile=str(cfg.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise NodeConfigError(
            f"destination tls: cannot load ca_file={cfg.ca_file} cert_file={cfg.cert_file}: {exc}"
        ) from exc
    ctx.check_hostname = cfg.check_hostname
    return ctx
