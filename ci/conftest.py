"""pytest's options for the harness's browser checks (ci/e2e_console.py)."""


def pytest_addoption(parser):
    group = parser.getgroup("console", "the console's browser checks (ci/e2e_console.py)")
    group.addoption("--workspace", help="the running workspace (deploy/local/up.sh started it)")
    group.addoption("--screenshots", help="a folder for the pages' screenshots")
    group.addoption("--gateway", help="the built gateway binary (for a dev token)")
    group.addoption("--chromium", default="/usr/bin/chromium")
    group.addoption("--keep-env", action="store_true",
                    help="restart processes with this environment (the harness's), not the demo's")
    group.addoption("--oidc-dir", help="oidc-provider's folder (setup-e2e-tools.sh): with it, the "
                    "operators' Retry is checked (check 4c)")
    group.addoption("--no-traces", action="store_true",
                    help="skip the trace check: the system's spans go to another receiver")
