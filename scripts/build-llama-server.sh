#!/usr/bin/env bash
# Builds llama.cpp's llama-server once, from the llama.cpp source vendored in the
# llama-cpp-python sdist (no prebuilt wheel runs on glibc 2.36), and caches the
# binary outside the repository so later setups skip the ~7 minute build.
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# The build flavour is part of the cache key, so a change of flags rebuilds.
flavour="avx2"
cache="${PARLEY_CACHE:-$HOME/.cache/parley}"
dest="$cache/llama-server-$version-$flavour"
pip="${PIP:-pip}"

if [[ -x "$dest/llama-server" ]]; then
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "llama-server: fetching the llama.cpp source (llama-cpp-python $version sdist)"
"$pip" download --quiet --no-binary=:all: --no-deps --no-build-isolation \
  "llama-cpp-python==$version" -d "$work" 2>/dev/null \
  || "$pip" download --quiet --no-binary=:all: --no-deps "llama-cpp-python==$version" -d "$work"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"

echo "llama-server: configuring (cmake)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  `# Not -march=native: on these VMs the CPU reports AMX, and ggml's AMX kernels crash (SIGSEGV in` \
  `# ggml_backend_amx_mul_mat) at the first decode; a native build without AMX (AVX-512) generated` \
  `# 23 tokens/s against 31 for this AVX2 build. AVX2/FMA runs on any x86-64 server of the last decade.` \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  >"$work/cmake.log" 2>&1 \
  || { cat "$work/cmake.log"; exit 1; }

echo "llama-server: compiling on $(nproc) cores (about 7 minutes the first time; cached in $dest)"
# Progress lines from cmake ("[ 42%] Building ...") show the build is moving.
if ! cmake --build "$work/build" --target llama-server -j "$(nproc)" 2>&1 | tee "$work/build.log" \
  | awk 'match($0, /^\[ *[0-9]+%\]/) { p = substr($0, RSTART + 1, RLENGTH - 2); gsub(/ /, "", p)
         if (p != last) { print "llama-server: build " p; fflush(); last = p } }'; then
  tail -n 40 "$work/build.log" >&2
  echo "llama-server: build failed" >&2
  exit 1
fi
test -x "$work/build/bin/llama-server" || { echo "llama-server: build failed" >&2; exit 1; }

mkdir -p "$dest.tmp"
cp "$work/build/bin/llama-server" "$dest.tmp/"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "llama-server: built $dest/llama-server"
