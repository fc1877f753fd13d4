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
from testkit.node import wait_until
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
        import playwright  # noqa: F401 - only checks that it is installed
    except ImportError:
        missing.append("Python package playwright (scripts/viewers.sh)")
    return missing


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """:func:`testkit.node.wait_until`, a ViewerError when ``timeout`` seconds pass."""
    try:
        return wait_until(predicate, timeout, what)
    except TimeoutError as exc:
        raise ViewerError(str(exc)) from exc


# --------------------------------------------------------------------------- Orthanc


def start_viewer_pacs(workdir: Path, *, binary: str | None = None, **kwargs) -> OrthancServer:
    """Orthanc with DICOMweb at ``/dicom-web/`` and the Orthanc Web Viewer at ``/web-viewer/``
    (``kwargs``: the other keywords of :func:`testkit.orthanc.start_orthanc`, e.g. ``aet``)."""
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
    return start_orthanc(workdir, binary=binary, plugins=plugins, extra_config=extra, **kwargs)


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


def ohif_config(dicomweb_root: str, *, prefetch: bool = True) -> str:
    """``app-config.js`` of OHIF: one DICOMweb data source at ``dicomweb_root`` (same origin);
    ``prefetch``: OHIF's study prefetcher on (see below)."""
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
        # Prefetch every frame of the displayed run: OHIF 3.13.2's SEG statistics
        # (prepareStackDataForWorker) skip uncached source frames and the worker then reads
        # scalarData of undefined, which crashes the whole viewer (see scripts/viewer_matrix.py).
        "studyPrefetcher": {"enabled": prefetch, "displaySetsCount": 1,
                            "maxNumPrefetchRequests": 10, "order": "closest"},
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

    def do_GET(self):  # http.server's naming
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
    def start(cls, orthanc: OrthancServer, root: Path = OHIF_DIST, *, prefetch: bool = True) -> OhifServer:
        if not (root / "index.html").exists():
            raise ViewerError(f"OHIF not found at {root}: run bash scripts/viewers.sh")
        httpd = _OhifHttpServer(("127.0.0.1", free_port()), _Handler)
        httpd.root = root.resolve()
        httpd.config_js = ohif_config("/dicom-web", prefetch=prefetch)
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
        from playwright.sync_api import sync_playwright  # optional peer

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
        self.page.on("response", lambda r: r.status >= 400 and self.console.append(
            f"http {r.status}: {r.request.method} {r.url.split('?')[0]}"))

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
        import cv2

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


def ohif_crashed(browser: Browser) -> bool:
    """True when OHIF's route error boundary caught an error ("Something went wrong")."""
    return any("Error Boundary" in line for line in browser.console)


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
    seg: Dataset  # as the node writes it today
    seg_planes: Dataset  # the same masks with image_plane_groups=True
    gsps: Dataset
    sc: Dataset
    sr: Dataset

    @property
    def study_uid(self) -> str:
        return str(self.source.StudyInstanceUID)

    def datasets(self) -> list[Dataset]:
        return [self.source, self.seg, self.seg_planes, self.gsps, self.sc, self.sr]


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


def build_viewer_study(n_frames: int = 8, rows: int = 256, columns: int = 320) -> ViewerStudy:
    """The XA run (8-bit, grey values 70..200 so that coloured or black overlays stand out),
    its root masks, and SEG (default, series 901; with image plane groups, series 905), GSPS,
    burned-in SC and TID 1500 SR built by our writers, all in the run's study."""
    from segmentation.dicom.calibration import calibrate
    from segmentation.dicom.overlay import (
        build_burned_in_capture,
        build_presentation_state,
    )
    from segmentation.dicom.seg import build_segmentation
    from segmentation.dicom.sr import build_measurement_report, measure_frames
    from tavidata.xa import Calibration as XrayCalibration
    from tavidata.xa import Identity, build_xray

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
    seg = build_segmentation(source, masks, frame_numbers=numbers, series_number=901,  # the SEG before the fix
                             series_description="Aortic root (AI)", image_plane_groups=False, **algorithm)
    seg_planes = build_segmentation(source, masks, frame_numbers=numbers, series_number=905,
                                    series_description="Aortic root (AI, image plane groups)",
                                    image_plane_groups=True, **algorithm)
    gsps = build_presentation_state(source, masks, frame_numbers=numbers, series_number=903,
                                    series_description="Aortic root outline", **algorithm)
    sc = build_burned_in_capture(source, iter(frames), masks, frame_numbers=numbers,
                                 series_number=904, series_description="Aortic root burned in",
                                 **algorithm)
    calibration = calibrate(source, number_of_frames=n_frames)
    sr = build_measurement_report(source, seg, measure_frames(masks, numbers),
                                  calibration=calibration, series_number=902,
                                  series_description="Aortic root area", **algorithm)
    return ViewerStudy(source, frames, masks, seg, seg_planes, gsps, sc, sr)


# --------------------------------------------------------------------------- reading screenshots

#: Verdicts of one viewer x object cell.
RIGHT_FRAME = "shows it on the right frame"
WRONG_FRAME = "shows it on the wrong frame"
MISPLACED = "shows it, misplaced (Dice < 0.9 on every frame)"
REFUSES = "refuses"
IGNORES = "ignores"
DICE_MIN = 0.9


def _longest_run(flags: np.ndarray) -> tuple[int, int] | None:
    """(start, stop) of the longest run of True in a 1-D array, or None."""
    best, start = None, None
    for i, flag in enumerate(np.append(flags, False)):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def image_rectangle(shot: np.ndarray, *, level: int = 40, share: float = 0.5) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the displayed image in a screenshot of a viewport: the
    longest runs of rows and of columns where most pixels are grey (not coloured) and brighter
    than the viewport's black background. The test image's grey values are 70..200; text,
    viewport borders and coloured overlays are too thin or too coloured to count."""
    spread = shot.max(axis=2).astype(int) - shot.min(axis=2).astype(int)
    grey = (shot.max(axis=2) > level) & (spread < 25)
    rows = _longest_run(grey.mean(axis=1) > share)
    cols = _longest_run(grey.mean(axis=0) > share)
    if rows is None or cols is None or rows[1] - rows[0] < 16 or cols[1] - cols[0] < 16:
        return None
    return rows[0], cols[0], rows[1], cols[1]


def register_image(shot: np.ndarray, frame: np.ndarray, *, step: int = 4) -> tuple[tuple[int, int, int, int], float]:
    """Find a known grey frame in a screenshot whatever the viewer's window, zoom and
    position: normalised cross-correlation over scales (coarse at 1/``step``, then refined at
    full resolution). Returns ((top, left, bottom, right), correlation)."""
    import cv2

    grey = shot.astype(np.float32).mean(axis=2)
    source = frame.astype(np.float32)
    fit = min(grey.shape[0] / source.shape[0], grey.shape[1] / source.shape[1])
    small = cv2.resize(grey, (grey.shape[1] // step, grey.shape[0] // step), interpolation=cv2.INTER_AREA)
    best = (-2.0, fit, (0, 0))
    for scale in np.linspace(0.4 * fit, fit, 61):
        h, w = round(source.shape[0] * scale / step), round(source.shape[1] * scale / step)
        if min(h, w) < 8 or h > small.shape[0] or w > small.shape[1]:
            continue
        template = cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA)
        _, score, _, loc = cv2.minMaxLoc(cv2.matchTemplate(small, template, cv2.TM_CCOEFF_NORMED))
        if score > best[0]:
            best = (score, scale, loc)
    score, scale, (x, y) = best
    refined = (score, scale, x * step, y * step)
    for fine in np.linspace(scale * 0.985, min(scale * 1.015, fit), 7):
        h, w = round(source.shape[0] * fine), round(source.shape[1] * fine)
        top = max(0, min(y * step - 2 * step, grey.shape[0] - h))
        left = max(0, min(x * step - 2 * step, grey.shape[1] - w))
        window = grey[top:min(grey.shape[0], top + h + 4 * step), left:min(grey.shape[1], left + w + 4 * step)]
        if window.shape[0] < h or window.shape[1] < w:
            continue
        template = cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA)
        _, fine_score, _, loc = cv2.minMaxLoc(cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED))
        if fine_score > refined[0]:
            refined = (fine_score, fine, left + loc[0], top + loc[1])
    score, scale, left, top = refined
    h, w = round(source.shape[0] * scale), round(source.shape[1] * scale)
    return (int(top), int(left), int(top + h), int(left + w)), float(score)


def overlay_pixels(shot: np.ndarray, *, black: bool = True) -> np.ndarray:
    """Pixels an overlay drew on the (grey, never black) test image: coloured (channel spread
    > 40: a SEG fill, a GSPS polyline) or, with ``black``, black (<= 20: the halo of a
    burned-in outline; leave it out on real angiograms, whose collimation is black)."""
    spread = shot.max(axis=2).astype(int) - shot.min(axis=2).astype(int)
    coloured = spread > 40
    return coloured | (shot.max(axis=2) <= 20) if black else coloured


def overlay_region(overlay: np.ndarray) -> np.ndarray:
    """The area an overlay marks: its pixels with the holes filled (an outline becomes the
    region it encloses; a fill stays a fill)."""
    import cv2
    from scipy import ndimage

    closed = cv2.morphologyEx(overlay.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    return ndimage.binary_fill_holes(closed.astype(bool))


def largest_component(region: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of a region (the outline's area; drops viewer widgets,
    text and specks that happen to be coloured or black)."""
    from scipy import ndimage

    labels, count = ndimage.label(region, structure=np.ones((3, 3), bool))
    if count <= 1:
        return region
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 0.0


@dataclass
class Reading:
    """What a screenshot shows: the image rectangle, the overlay's Dice with each frame's mask
    projected into that rectangle, and the verdict for the requested frame."""

    verdict: str
    frame: int
    rectangle: tuple[int, int, int, int] | None
    dice_by_frame: list[float]
    overlay_share: float
    note: str = ""

    @property
    def best_frame(self) -> int | None:
        return int(np.argmax(self.dice_by_frame)) + 1 if self.dice_by_frame else None

    @property
    def dice(self) -> float | None:
        return self.dice_by_frame[self.frame - 1] if self.dice_by_frame else None


def read_screenshot(shot: np.ndarray, masks: np.ndarray, frame: int, *,
                    error: str = "", rectangle: tuple[int, int, int, int] | None = None,
                    black_overlay: bool = True) -> Reading:
    """Register the image in the screenshot (``rectangle`` when already found, e.g. by
    :func:`register_image`), find the overlay, compare it with every frame's mask
    (nearest-neighbour projection into the image rectangle) and give the verdict."""
    import cv2

    rect = rectangle or image_rectangle(shot)
    if rect is None:
        return Reading(REFUSES if error else IGNORES, frame, None, [], 0.0,
                       error or "no image in the viewport")
    top, left, bottom, right = rect
    inside = shot[top:bottom, left:right]
    region = largest_component(overlay_region(overlay_pixels(inside, black=black_overlay)))
    share = float(region.mean())
    if share < 0.01:
        return Reading(REFUSES if error else IGNORES, frame, rect, [], share,
                       error or "no overlay drawn on the image")
    scores = []
    for mask in masks:
        projected = cv2.resize(mask.astype(np.uint8), (right - left, bottom - top),
                               interpolation=cv2.INTER_NEAREST).astype(bool)
        scores.append(dice(region, projected))
    best = int(np.argmax(scores)) + 1
    if scores[frame - 1] >= DICE_MIN:
        verdict = RIGHT_FRAME
    elif scores[best - 1] >= DICE_MIN:
        verdict = WRONG_FRAME
    else:
        verdict = MISPLACED
    return Reading(verdict, frame, rect, [round(s, 4) for s in scores], share, error)


# --------------------------------------------------------------------------- the cells

VIEWERS = ("OHIF v3", "Orthanc Web Viewer")
#: Objects of the table: label -> (study attribute, OHIF series description).
OBJECTS = {
    "SEG": ("seg", "Aortic root (AI)"),
    "SEG + image plane groups": ("seg_planes", "Aortic root (AI, image plane groups)"),
    "GSPS": ("gsps", "Aortic root outline"),
    "SC overlay": ("sc", "Aortic root burned in"),
    "SR": ("sr", "Aortic root area"),
}
#: Why a cell cannot work, found in the viewer's source (OHIF: the npm bundle's code).
REASONS = {
    ("OHIF v3", "SEG"): (
        "OHIF's SEG viewport (_getReferencedDisplaySetMetadata) destructures "
        "SharedFunctionalGroupsSequence[0].PixelMeasuresSequence, and cornerstone3D's SEG adapter "
        "(checkOrientation) reads PlaneOrientationSequence.ImageOrientationPatient; a SEG of an XA "
        "without Frame of Reference has neither (fixed by image_plane_groups=True)"),
    ("OHIF v3", "GSPS"): (
        "OHIF v3 has no SOP class handler for Grayscale Softcopy Presentation State: the PR "
        "series goes to the not-supported display-set handler (warning icon) and loading it "
        "leaves the image unchanged"),
    ("OHIF v3", "SR"): (
        "OHIF's SR extension draws TID 1500 measurements only from SCOORD/SCOORD3D items; ours "
        "reference a SEG frame (non-geometric measurement), so the SR viewport stays empty"),
    ("Orthanc Web Viewer", "SEG"): (
        "the Orthanc Web Viewer (2.8) shows one series at a time and draws no overlays: the XA "
        "has no outline, the SEG series shows as a separate black-and-white image"),
    ("Orthanc Web Viewer", "SEG + image plane groups"): (
        "the Orthanc Web Viewer (2.8) shows one series at a time and draws no overlays"),
    ("Orthanc Web Viewer", "GSPS"): (
        "the Orthanc Web Viewer (2.8) does not apply presentation states; the PR series "
        "itself fails to load (HTTP 500 from the plugin)"),
    ("Orthanc Web Viewer", "SR"): (
        "the Orthanc Web Viewer (2.8) shows images only; the SR series fails to load (HTTP 500)"),
}

#: What the test expects of each cell today (a change of behaviour fails the test).
EXPECTED = {
    ("OHIF v3", "SEG"): REFUSES,
    ("OHIF v3", "SEG + image plane groups"): RIGHT_FRAME,
    ("OHIF v3", "GSPS"): IGNORES,
    ("OHIF v3", "SC overlay"): RIGHT_FRAME,
    ("OHIF v3", "SR"): IGNORES,
    ("Orthanc Web Viewer", "SEG"): IGNORES,
    ("Orthanc Web Viewer", "SEG + image plane groups"): IGNORES,
    ("Orthanc Web Viewer", "GSPS"): IGNORES,
    ("Orthanc Web Viewer", "SC overlay"): RIGHT_FRAME,
    ("Orthanc Web Viewer", "SR"): IGNORES,
}


def _settle(browser: Browser, clip: dict | None, timeout_s: float = 10.0) -> np.ndarray:
    """Screenshots until two in a row are equal (rendering finished), within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    previous = browser.screenshot(clip=clip)
    while time.monotonic() < deadline:
        time.sleep(0.4)
        current = browser.screenshot(clip=clip)
        if current.shape == previous.shape and np.array_equal(current, previous):
            return current
        previous = current
    return previous


def _errors(browser: Browser) -> str:
    """The first error the page's code reported (a failed request alone is not one: see
    :func:`_http_errors`), or ""."""
    found = [line for line in browser.console
             if line.startswith(("error:", "pageerror:")) and "Failed to load resource" not in line]
    return found[0].splitlines()[0][:240] if found else ""


def _http_errors(browser: Browser) -> str:
    """The first failed request (status >= 400) of the page, or ""."""
    found = [line for line in browser.console if line.startswith("http ") and "favicon" not in line]
    return found[0][:240] if found else ""


def _try_wait(browser: Browser, script: str, arg=None, timeout_s: float = 30.0) -> bool:
    try:
        browser.wait_for_function(script, arg, timeout_s=timeout_s)
        return True
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: the caller records the state
        return False


_SET_FRAME = """(index) => {
  let done = false;
  for (const engine of window.cornerstone.getRenderingEngines()) {
    for (const vp of engine.getViewports()) {
      if (vp.getImageIds && vp.getImageIds().length > index) { vp.setImageIdIndex(index); done = true; }
    }
  }
  return done;
}"""
_AT_FRAME = """(index) => window.cornerstone.getRenderingEngines().some(e => e.getViewports().some(
  vp => vp.getImageIds && vp.getImageIds().length > index && vp.getCurrentImageIdIndex() === index))"""
_SEG_LOADED = """() => { try {
  const cs = window.cornerstone, state = window.cornerstoneTools.segmentation.state;
  return cs.getRenderingEngines().some(e => e.getViewports().some(vp => vp.getImageIds
    && vp.getImageIds().length > 0 && (state.getSegmentationRepresentations(vp.id) || []).length > 0));
} catch (e) { return false; } }"""
_SHOWS_SERIES = """(uid) => window.cornerstone && window.cornerstone.getRenderingEngines().some(
  e => e.getViewports().some(vp => vp.getCurrentImageId && (vp.getCurrentImageId() || '').includes(uid)))"""
_ALL_CACHED = """() => window.cornerstone && window.cornerstone.getRenderingEngines().some(
  e => e.getViewports().some(vp => vp.getImageIds && vp.getImageIds().length > 0
    && vp.getImageIds().every(id => window.cornerstone.cache.getImage(id))))"""
_HAS_IMAGE = """() => window.cornerstone && window.cornerstone.getRenderingEngines().some(
  e => e.getViewports().some(vp => vp.getImageIds && vp.getImageIds().length > 0))"""


def ohif_show(browser: Browser, ohif: OhifServer, study_uid: str, description: str, kind: str,
              frame: int, series_uid: str = "", *,
              wait_cached: bool = True) -> tuple[np.ndarray | None, str]:
    """Open a study in OHIF, load the series ``description`` (double-click in the study
    browser; ``kind``: "SEG", "image" or "other"), step to ``frame`` and return the settled
    screenshot of the viewport showing an image (None when none does) with the first error
    the page reported ("" when none)."""
    browser.open(ohif.study_url(study_uid))
    if not _try_wait(browser, _HAS_IMAGE, timeout_s=90):
        return None, "OHIF showed no image: " + _errors(browser)
    skip = browser.page.get_by_text("Skip all")
    if skip.count():
        skip.first.click()
    if kind == "SEG" and wait_cached:  # every source frame in the cache first (see ohif_config)
        _try_wait(browser, _ALL_CACHED, timeout_s=60)
    browser.page.get_by_text(description, exact=True).first.dblclick()
    if kind == "SEG":  # loaded, or an error reported: whichever comes first
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not _errors(browser):
            if _try_wait(browser, _SEG_LOADED, timeout_s=1):
                break
    elif kind == "image":
        _try_wait(browser, _SHOWS_SERIES, series_uid, timeout_s=45)
    else:  # GSPS, SR: whatever OHIF does with them has no event of its own to await
        _settle(browser, None, timeout_s=8)
    # A loaded SEG or image series gets a viewport with images (a SEG viewport reloads its
    # source run, and OHIF may re-mount it once the segmentation is attached: the frame is set
    # and the screenshot taken only on a viewport that is still there after it settled); an
    # SR or PR may get none.
    final = {"SEG": _SEG_LOADED, "other": _HAS_IMAGE}.get(
        kind, f"() => ({_SHOWS_SERIES})({json.dumps(series_uid)})")
    deadline = time.monotonic() + (5 if kind == "other" else 60)
    while not (kind == "SEG" and _errors(browser)):
        if _try_wait(browser, final, timeout_s=max(1.0, deadline - time.monotonic())):
            browser.evaluate(_SET_FRAME, frame - 1)
            viewports = [v for v in ohif_viewports(browser) if v["n"]]
            if viewports and _try_wait(browser, _AT_FRAME, frame - 1, timeout_s=15):
                v = viewports[0]
                shot = _settle(browser, {"x": v["x"], "y": v["y"], "width": v["w"], "height": v["h"]})
                if browser.evaluate(_AT_FRAME, frame - 1) and browser.evaluate(final):
                    return shot, _errors(browser)
        if time.monotonic() >= deadline:
            break
    return None, _errors(browser)


def ohif_cell(browser: Browser, ohif: OhifServer, study: ViewerStudy, label: str, frame: int,
              shot_path: Path | None = None) -> Reading:
    """Open the study in OHIF, load the object, step to ``frame`` and read the screenshot."""
    attribute, description = OBJECTS[label]
    ds = getattr(study, attribute)
    kind = "SEG" if label.startswith("SEG") else "image" if label == "SC overlay" else "other"
    shot, error = ohif_show(browser, ohif, study.study_uid, description, kind, frame,
                            str(ds.SeriesInstanceUID))
    if shot is None:  # nothing to register
        if shot_path is not None:
            save_thumbnail(browser.screenshot(), shot_path)
        return Reading(REFUSES if error else IGNORES, frame, None, [], 0.0,
                       error or "no image in any viewport after loading it")
    if shot_path is not None:
        save_thumbnail(shot, shot_path)
    reading = read_screenshot(shot, study.masks, frame, error=error)
    if _http_errors(browser):
        reading.note = "; ".join(n for n in (reading.note, _http_errors(browser)) if n)
    return reading


#: The real run of the samples used by :func:`real_run_reading` (tests/dicom samples folder).
REAL_RUN = "rubo_0002_XA_jpegbaseline_96f.dcm"


def real_run_reading(browser: Browser, ohif: OhifServer, pacs: OrthancServer, path: Path,
                     shot_path: Path | None = None, *, wait_cached: bool = True) -> Reading:
    """A real multi-frame XA run (``path``; the samples carry no calibration, so
    ImagerPixelSpacing 0.3 mm is added: image plane groups need a spacing) with our SEG
    (``image_plane_groups=True``) on frames 10, 40 and 70, opened in OHIF at frame 40. The
    image is found in the screenshot by normalised cross-correlation with the decoded frame
    (the viewer's window and zoom are unknown); only coloured pixels count as overlay (the
    run's collimation is black). The reading's frame 2 is source frame 40."""
    import pydicom
    from pydicom.uid import generate_uid

    from segmentation.dicom.reader import open_run
    from segmentation.dicom.seg import build_segmentation

    source = pydicom.dcmread(path)
    source.ImagerPixelSpacing = [0.3, 0.3]
    rows, columns = int(source.Rows), int(source.Columns)
    yy, xx = np.mgrid[:rows, :columns]
    masks = np.stack([((yy - rows * (0.39 + 0.06 * i)) / (rows * 0.23)) ** 2
                      + ((xx - columns * (0.35 + 0.12 * i)) / (columns * 0.16)) ** 2 < 1
                      for i in range(3)])
    description = "Aortic root (AI, real run)"
    seg = build_segmentation(source, masks, frame_numbers=[10, 40, 70], series_number=906,
                             series_description=description, algorithm_name="taviseg-viewer-check",
                             algorithm_version="1", image_plane_groups=True,
                             series_instance_uid=generate_uid(entropy_srcs=[source.SOPInstanceUID, "series"]),
                             sop_instance_uid=generate_uid(entropy_srcs=[source.SOPInstanceUID, "seg"]))
    store(pacs, [source, seg])
    shot, error = ohif_show(browser, ohif, str(source.StudyInstanceUID), description, "SEG", 40,
                            wait_cached=wait_cached)
    if shot is None:
        if shot_path is not None:
            save_thumbnail(browser.screenshot(), shot_path)
        return Reading(REFUSES if error else IGNORES, 2, None, [], 0.0, error or "no image")
    if shot_path is not None:
        save_thumbnail(shot, shot_path)
    rectangle, correlation = register_image(shot, open_run(path).read_frame(39))
    if correlation < 0.9:
        return Reading(MISPLACED, 2, None, [], 0.0,
                       f"source frame 40 not found in the screenshot (NCC {correlation:.3f})")
    reading = read_screenshot(shot, masks, 2, rectangle=rectangle, black_overlay=False, error=error)
    reading.note = f"image registered by NCC {correlation:.3f}" + (f"; {reading.note}" if reading.note else "")
    return reading


def webviewer_cell(browser: Browser, pacs: OrthancServer, study: ViewerStudy, label: str,
                   frame: int, shot_path: Path | None = None) -> Reading:
    """The Orthanc Web Viewer shows one series at a time and loads nothing onto it: open the
    series where the outline would be (the SC's own series for the SC overlay, the XA series
    for the others), step to ``frame`` with the mouse wheel and read the screenshot; for SEG,
    GSPS and SR also note what the viewer does with the object's own series."""
    attribute, _ = OBJECTS[label]
    ds = getattr(study, attribute)
    note = ""
    if label != "SC overlay":
        browser.open(webviewer_url(pacs, str(ds.SeriesInstanceUID)))
        shot = _settle(browser, None, timeout_s=15)
        err = _errors(browser) or _http_errors(browser)
        rect = image_rectangle(shot, share=0.02)
        note = ("its own series: " + (f"error ({err})" if err else
                "shown alone as a separate black-and-white image, not on the XA" if rect
                else "nothing shown"))
        target = study.source
    else:
        target = ds
    browser.open(webviewer_url(pacs, str(target.SeriesInstanceUID)))
    box = browser.wait_for("#dicomImage canvas", timeout_s=30).bounding_box()
    clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}
    _settle(browser, clip, timeout_s=15)
    browser.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(frame - 1):
        browser.page.mouse.wheel(0, 120)
        time.sleep(0.15)
    shot = _settle(browser, clip)
    if shot_path is not None:
        save_thumbnail(shot, shot_path)
    reading = read_screenshot(shot, study.masks, frame, error=_errors(browser))
    reading.note = "; ".join(n for n in (reading.note, note) if n)
    return reading


def save_thumbnail(shot: np.ndarray, path: Path, width: int = 400) -> None:
    """A small PNG of a screenshot: ``width`` px wide, 64-colour palette (a few tens of KB)."""
    import cv2
    from PIL import Image

    height = max(1, round(shot.shape[0] * width / shot.shape[1]))
    small = cv2.resize(shot, (width, height), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).quantize(colors=64).save(path, optimize=True)


@dataclass
class ViewerStack:
    """Orthanc (DICOMweb + Web Viewer), OHIF's server and a browser, holding one study."""

    pacs: OrthancServer
    ohif: OhifServer
    browser: Browser
    study: ViewerStudy

    @classmethod
    def start(cls, workdir: Path, *, binary: str | None = None) -> ViewerStack:
        study = build_viewer_study()
        pacs = start_viewer_pacs(workdir / "orthanc", binary=binary)
        ohif = browser = None
        try:
            store(pacs, study.datasets())
            ohif = OhifServer.start(pacs)
            browser = Browser()
        except BaseException:
            if ohif is not None:
                ohif.stop()
            pacs.stop()
            raise
        return cls(pacs, ohif, browser, study)

    def cell(self, viewer: str, label: str, frame: int, shot_path: Path | None = None) -> Reading:
        if viewer == "OHIF v3":
            return ohif_cell(self.browser, self.ohif, self.study, label, frame, shot_path)
        if viewer == "Orthanc Web Viewer":
            return webviewer_cell(self.browser, self.pacs, self.study, label, frame, shot_path)
        raise ViewerError(f"unknown viewer {viewer!r} (known: {', '.join(VIEWERS)})")

    def stop(self) -> None:
        try:
            self.browser.close()
        finally:
            self.ohif.stop()
            self.pacs.stop()
