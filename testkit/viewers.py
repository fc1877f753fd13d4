"""A real web-viewer stack for tests, the viewer matrix and the demo.

* :func:`start_viewer_pacs`: Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb) and the
  Orthanc Web Viewer plugin (Debian orthanc-webviewer), on free loopback ports.
* :class:`OhifServer`: the prebuilt OHIF Viewer v3 (npm ``@ohif/app``, unpacked by
  ``scripts/viewers.sh`` into ``.cache/ohif/current/package/dist``) served from a free loopback
  port, with an ``app-config.js`` written here and ``/dicom-web/`` proxied to Orthanc, so the
  browser talks to one origin (Orthanc's DICOMweb plugin sends no CORS headers).
* :class:`Browser`: headless Debian Chromium driven by Playwright for Python (never a
  downloaded browser) that opens a viewer URL, waits for the viewport, steps to a frame and
  takes a screenshot.

Every wait is bounded by a deadline; nothing listens on a fixed port; nothing is fetched from
the network (OHIF's bundle is local, Chromium's background networking is off).
"""

from __future__ import annotations

import http.client
import http.server
import io
import json
import logging
import mimetypes
import shutil
import socketserver
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from tavicore.errors import TavisegError
from testkit.orthanc import OrthancServer, free_port, start_orthanc
from testkit.paths import REPO

logger = logging.getLogger(__name__)

OHIF_DIST = REPO / ".cache" / "ohif" / "current" / "package" / "dist"
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PLUGINS = ("libOrthancDicomWeb.so", "libOrthancWebViewer.so")
CHROMIUM = Path("/usr/bin/chromium")
#: Flags of Chromium on this closed network (no background connections), WebGL in software.
CHROMIUM_FLAGS = (
    "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
)
VIEWPORT_SIZE = (1280, 900)


class ViewerError(TavisegError):
    """A part of the viewer stack is missing, did not start, or did not answer in time."""


def missing_parts() -> list[str]:
    """What ``scripts/viewers.sh`` should have installed and is not here (empty when ready)."""
    missing = [f"{PLUGIN_DIR / p} (Debian orthanc-dicomweb / orthanc-webviewer)"
               for p in PLUGINS if not (PLUGIN_DIR / p).exists()]
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian chromium)")
    if not (OHIF_DIST / "index.html").exists():
        missing.append(f"{OHIF_DIST}/index.html (OHIF from npm, scripts/viewers.sh)")
    try:
        import playwright  # noqa: F401, PLC0415
    except ImportError:
        missing.append("Python package playwright (scripts/viewers.sh)")
    return missing


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until truthy or ``timeout`` seconds pass (ViewerError then)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise ViewerError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


# --------------------------------------------------------------------------- Orthanc


def start_viewer_pacs(workdir: Path, *, binary: str | None = None) -> OrthancServer:
    """Orthanc with DICOMweb at ``/dicom-web/`` and the Orthanc Web Viewer at ``/web-viewer/``."""
    plugins = [str(PLUGIN_DIR / p) for p in PLUGINS if (PLUGIN_DIR / p).exists()]
    if len(plugins) != len(PLUGINS):
        raise ViewerError(f"Orthanc plugins missing in {PLUGIN_DIR}: run bash scripts/viewers.sh")
    extra = {
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                     "WadoRoot": "/wado", "Ssl": False, "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full"},
        "WebViewer": {"CachePath": str(workdir / "webviewer-cache"), "CacheSize": 100,
                      "Threads": 2},
    }
    return start_orthanc(workdir, binary=binary, plugins=plugins, extra_config=extra)


def store(server: OrthancServer, datasets: Iterable[Dataset]) -> list[str]:
    """Store datasets through Orthanc's REST API; return their Orthanc instance ids."""
    ids = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        req = urllib.request.Request(server.url + "/instances", data=buffer.getvalue(),
                                     method="POST", headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise ViewerError(f"Orthanc refused {ds.SOPInstanceUID}: {answer}")
        ids.append(answer["ID"])
    return ids


def orthanc_series_id(server: OrthancServer, series_uid: str) -> str:
    """Orthanc's id of the series with DICOM ``series_uid``."""
    req = urllib.request.Request(server.url + "/tools/lookup", data=series_uid.encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        found = json.loads(resp.read())
    for item in found:
        if item.get("Type") == "Series":
            return item["ID"]
    raise ViewerError(f"series {series_uid} not in Orthanc")


def webviewer_url(server: OrthancServer, series_uid: str) -> str:
    """The Orthanc Web Viewer's page of one series."""
    return f"{server.url}/web-viewer/app/viewer.html?series={orthanc_series_id(server, series_uid)}"


# --------------------------------------------------------------------------- OHIF


def ohif_config(dicomweb_root: str) -> str:
    """``app-config.js`` of OHIF: one DICOMweb data source at ``dicomweb_root`` (same origin)."""
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": False,
        "investigationalUseDialog": {"option": "never"},
        "disableConfirmationPrompts": True,
        "measurementTrackingMode": "none",
        "defaultDataSourceName": "orthanc",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "orthanc",
            "configuration": {
                "friendlyName": "taviseg Orthanc",
                "name": "orthanc",
                "wadoUriRoot": dicomweb_root,
                "qidoRoot": dicomweb_root,
                "wadoRoot": dicomweb_root,
                "qidoSupportsIncludeField": False,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "staticWado": False,
                "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                "omitQuotationForMultipartRequest": True,
            },
        }],
    }
    return "window.config = " + json.dumps(config, indent=1) + ";\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _OhifHttpServer

    def log_message(self, fmt, *args):  # quiet: requests go to the debug log only
        logger.debug("ohif http: " + fmt, *args)

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path.startswith("/dicom-web/"):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, self.server.config_js.encode(), "application/javascript")
        else:
            self._static(path)

    def _send(self, status: int, body: bytes, content_type: str, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _static(self, path: str) -> None:
        root = self.server.root
        target = (root / path.lstrip("/")).resolve()
        if root not in target.parents and target != root or not target.is_file():
            target = root / "index.html"  # single-page app: every route is index.html
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            kind = "application/wasm"
        self._send(200, target.read_bytes(), kind)

    def _proxy(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() in ("accept", "range", "content-type")}
        try:
            conn.request("GET", self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        passed = [(k, v) for k, v in resp.getheaders()
                  if k.lower() not in ("content-length", "connection", "transfer-encoding",
                                       "content-type", "keep-alive")]
        self._send(resp.status, body, resp.getheader("Content-Type", "application/octet-stream"),
                   passed)


class _OhifHttpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    root: Path
    config_js: str
    orthanc_port: int


@dataclass
class OhifServer:
    """OHIF's static files and a same-origin DICOMweb proxy to Orthanc, in a thread."""

    httpd: _OhifHttpServer
    thread: threading.Thread

    @classmethod
    def start(cls, orthanc: OrthancServer, root: Path = OHIF_DIST) -> OhifServer:
        if not (root / "index.html").exists():
            raise ViewerError(f"OHIF not found at {root}: run bash scripts/viewers.sh")
        httpd = _OhifHttpServer(("127.0.0.1", free_port()), _Handler)
        httpd.root = root.resolve()
        httpd.config_js = ohif_config("/dicom-web")
        httpd.orthanc_port = orthanc.http_port
        thread = threading.Thread(target=httpd.serve_forever, name="ohif-http", daemon=True)
        thread.start()
        return cls(httpd, thread)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def study_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """The OHIF viewer page of a study (optionally showing only some series)."""
        url = f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"
        return url + (f"&SeriesInstanceUIDs={series_uid}" if series_uid else "")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


# --------------------------------------------------------------------------- browser


class Browser:
    """Headless Debian Chromium under Playwright, one page at a time, with a fresh profile."""

    def __init__(self, size: tuple[int, int] = VIEWPORT_SIZE) -> None:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional peer

        if not CHROMIUM.exists():
            raise ViewerError(f"{CHROMIUM} not installed: run bash scripts/viewers.sh")
        self._profile = Path(tempfile.mkdtemp(prefix="taviseg-chromium-"))
        self._pw = sync_playwright().start()
        try:
            self._context = self._pw.chromium.launch_persistent_context(
                str(self._profile), executable_path=str(CHROMIUM), headless=True,
                args=list(CHROMIUM_FLAGS), viewport={"width": size[0], "height": size[1]},
                service_workers="block",
            )
        except BaseException:
            self._pw.stop()
            raise
        self.page = self._context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))

    def open(self, url: str, *, timeout_s: float = 60.0) -> None:
        self.console.clear()
        self.page.goto(url, timeout=timeout_s * 1000, wait_until="load")

    def wait_for(self, selector: str, *, timeout_s: float = 60.0):
        return self.page.wait_for_selector(selector, timeout=timeout_s * 1000, state="visible")

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def wait_for_function(self, script: str, arg=None, *, timeout_s: float = 60.0):
        return self.page.wait_for_function(script, arg=arg, timeout=timeout_s * 1000,
                                           polling=200)

    def screenshot(self, path: Path | None = None, *, clip: dict | None = None) -> np.ndarray:
        """Screenshot of the page (or ``clip``) as an RGB array; also saved at ``path``."""
        import cv2  # noqa: PLC0415

        png = self.page.screenshot(clip=clip, type="png")
        if path is not None:
            Path(path).write_bytes(png)
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        try:
            self._context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)


# --------------------------------------------------------------------------- OHIF steps

#: JavaScript: the OHIF (cornerstone3D) viewports that show an image, with their state.
_OHIF_VIEWPORTS = """() => {
  const cs = window.cornerstone; if (!cs || !cs.getRenderingEngines) return [];
  const out = [];
  for (const engine of cs.getRenderingEngines()) {
    for (const vp of engine.getViewports()) {
      const ids = vp.getImageIds ? vp.getImageIds() : [];
      const rect = vp.element.getBoundingClientRect();
      out.push({id: vp.id, type: vp.type, n: ids.length,
                index: vp.getCurrentImageIdIndex ? vp.getCurrentImageIdIndex() : -1,
                imageId: ids.length && vp.getCurrentImageId ? vp.getCurrentImageId() : null,
                x: rect.x, y: rect.y, w: rect.width, h: rect.height});
    }
  }
  return out;
}"""


def ohif_viewports(browser: Browser) -> list[dict]:
    """The OHIF viewports (id, type, number of images, current index and image id, rect)."""
    return browser.evaluate(_OHIF_VIEWPORTS)


# --------------------------------------------------------------------------- test study


@dataclass
class ViewerStudy:
    """A synthetic multi-frame XA run with a known root mask per frame, and our four objects."""

    source: Dataset
    frames: np.ndarray  # (n, rows, columns) uint8, what the XA holds
    masks: np.ndarray  # (n, rows, columns) bool, the root of each frame
    seg: Dataset
    gsps: Dataset
    sc: Dataset
    sr: Dataset

    @property
    def study_uid(self) -> str:
        return str(self.source.StudyInstanceUID)

    def objects(self) -> dict[str, Dataset]:
        return {"SEG": self.seg, "GSPS": self.gsps, "SC": self.sc, "SR": self.sr}


def study_masks(n_frames: int, rows: int, columns: int) -> np.ndarray:
    """One ellipse per frame, moving right by 6 % of the width per frame (so a neighbouring
    frame's mask overlaps with Dice < 0.85: a viewer showing the wrong frame is caught)."""
    yy, xx = np.mgrid[:rows, :columns]
    masks = []
    for k in range(n_frames):
        cx = columns * (0.28 + 0.06 * k)
        cy = rows * (0.45 + 0.02 * k)
        masks.append(((xx - cx) / (columns * 0.13)) ** 2 + ((yy - cy) / (rows * 0.22)) ** 2 < 1)
    return np.stack(masks)


def build_viewer_study(n_frames: int = 8, rows: int = 256, columns: int = 320, *,
                       image_plane_groups: bool = False) -> ViewerStudy:
    """The XA run (8-bit, grey values 70..200 so that overlays in colour or white stand out),
    its root masks, and SEG, GSPS, burned-in SC and TID 1500 SR built by our writers."""
    from segmentation.dicom.calibration import calibrate  # noqa: PLC0415
    from segmentation.dicom.overlay import build_burned_in_capture, build_presentation_state  # noqa: PLC0415
    from segmentation.dicom.seg import build_segmentation  # noqa: PLC0415
    from segmentation.dicom.sr import build_measurement_report, measure_frames  # noqa: PLC0415
    from tavidata.xa import Calibration as XrayCalibration  # noqa: PLC0415
    from tavidata.xa import Identity, build_xray  # noqa: PLC0415

    masks = study_masks(n_frames, rows, columns)
    yy, xx = np.mgrid[:rows, :columns]
    rng = np.random.default_rng(19)
    base = 150 + 40 * (xx / columns) - 20 * (yy / rows)
    frames = []
    for mask in masks:
        frame = base + rng.normal(0, 4, base.shape) - 60 * mask
        frames.append(np.clip(frame, 70, 200).astype(np.uint8))
    frames = np.stack(frames)
    source = build_xray(
        frames,
        identity=Identity(patient_id="VIEWER-0001", patient_name="Viewer^Check"),
        calibration=XrayCalibration(imager_spacing_mm=(0.3, 0.3), sid_mm=1200, sod_mm=800),
        attributes={"WindowCenter": 128, "WindowWidth": 256},
    )
    numbers = list(range(1, n_frames + 1))
    algorithm = {"algorithm_name": "taviseg-viewer-check", "algorithm_version": "1"}
    seg = build_segmentation(source, masks, frame_numbers=numbers, series_number=901,
                             series_description="Aortic root (AI)",
                             image_plane_groups=image_plane_groups, **algorithm)
    gsps = build_presentation_state(source, masks, frame_numbers=numbers, series_number=903,
                                    series_description="Aortic root outline", **algorithm)
    sc = build_burned_in_capture(source, iter(frames), masks, frame_numbers=numbers,
                                 series_number=904, series_description="Aortic root burned in",
                                 **algorithm)
    calibration = calibrate(source, number_of_frames=n_frames)
    sr = build_measurement_report(source, seg, measure_frames(masks, numbers),
                                  calibration=calibration, series_number=902,
                                  series_description="Aortic root area", **algorithm)
    return ViewerStudy(source, frames, masks, seg, gsps, sc, sr)
