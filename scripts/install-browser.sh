#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for tests/test_viewer_browser.py (the web
# viewer in a real headless browser). Needs root (or password-less sudo) and apt-get. Never
# fails: where the browser cannot be installed, that test skips and says why.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "install-browser: chromium and chromedriver are already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here; the browser test will skip"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-browser: not root and no password-less sudo; the browser test will skip"
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver; then
  echo "install-browser: installed $(chromium --version 2>/dev/null)"
else
  echo "install-browser: apt-get failed; the browser test will skip"
fi
exit 0
