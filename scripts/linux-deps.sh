#!/usr/bin/env bash
# Linux only: install the system libraries Fine-Tune Studio needs when they are missing.
#  - libopenblas0-pthread: fast BLAS that trainer_core/models/native_blas.py preloads before MLX
#  - the X11/EGL/font libraries Qt's xcb platform plugin needs to open a window
#  - a C++ compiler: llama-cpp-python (the q4_k_m/q5_k_m/q6_k GGUF exports) builds llama.cpp from source
# Uses apt-get as root, or sudo when available; otherwise prints what to install and carries on
# (the program still runs: slower BLAS, or offscreen only).
set -u
[ "$(uname -s)" = "Linux" ] || exit 0
command -v apt-get >/dev/null 2>&1 || { echo "linux-deps: not a Debian/Ubuntu system; install OpenBLAS and Qt's xcb libraries yourself"; exit 0; }
pkgs=(libopenblas0-pthread libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
      libxcb-xkb1 libxkbcommon-x11-0 libxkbcommon0 libegl1 libgl1 libfontconfig1 libdbus-1-3 libglib2.0-0 g++)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
  echo "linux-deps: please install: ${missing[*]} (apt-get install); continuing without them"; exit 0; fi
echo "linux-deps: installing ${missing[*]}"
$sudo apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
  || echo "linux-deps: could not install ${missing[*]}; continuing (slower BLAS / no window)"
exit 0
