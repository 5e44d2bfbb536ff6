#!/bin/sh
# Installs Debian's Chromium and chromedriver for the browser test (tests/test_serve.py), when
# apt-get is there and we are root or sudo works without a password. Otherwise it says why it
# skipped and exits 0: the test then skips with its reason, and the other tests still run.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "install_browser: chromium and chromedriver already installed"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: skipped, no apt-get (install Chromium and chromedriver yourself to run the browser test)"; exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "install_browser: skipped, not root and no password-less sudo (run: sudo apt-get install chromium chromium-driver)"; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium chromium-driver >/dev/null; then
  echo "install_browser: installed $(chromium --version 2>/dev/null)"
else
  echo "install_browser: apt-get could not install chromium chromium-driver; the browser test will skip"
fi
exit 0
