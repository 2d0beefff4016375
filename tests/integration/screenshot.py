"""Makes docs/dashboard.png: a dev node serving the dashboard, the example chat app submitted
to it and a few rooms opened, the supervision view shot in Debian's headless Chromium.

    python3 tests/integration/screenshot.py [OUT.png]

Needs the binaries the integration tests use ($REBEAM_NODE or target/release)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from selenium.webdriver.common.by import By  # noqa: E402
from test_dashboard_browser import browser, login  # noqa: E402

from harness import REPO, TOKEN, DevNode, wait_for  # noqa: E402
from rebeam import Global  # noqa: E402
from rebeam.testing import free_port  # noqa: E402


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="rebeam-screenshot-") as root:
        http = f"127.0.0.1:{free_port()}"
        dev = DevNode(name="dev", dir=Path(root) / "dev", controllers="",
                      extra=["--http-listen", http]).start()
        try:
            with dev.client() as client:
                client.submit(REPO / "examples" / "chat")
                for room in ("general", "random", "ops"):
                    wait_for("the lobby", lambda: client.whereis("lobby"))
                    client.call(Global("lobby"), ("room", room))
            d = browser()
            try:
                login(d, f"http://{http}", TOKEN)
                d.get(f"http://{http}/#tree")
                wait_for("the tree", lambda: "rooms" in d.find_element(By.ID, "tree").text)
                d.set_window_size(1400, 900)
                d.save_screenshot(str(out))
            finally:
                d.quit()
        finally:
            dev.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "dashboard.png")
