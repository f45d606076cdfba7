#!/bin/sh
# Installs the tools the deploy/ tests use when they are missing: promtool (Debian package
# "prometheus") and kubectl (Debian package "kubernetes-client", whose kubectl has kustomize
# built in). Idempotent and quiet; safe to call from CI on every run. Under CI=true the tests
# that need them fail rather than skip when they are missing.
set -eu

missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v kubectl >/dev/null 2>&1 || missing="$missing kubernetes-client"
if [ -z "$missing" ]; then
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "install-tools: missing$missing and not root (no sudo): install those Debian packages" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# --no-install-recommends: only promtool is needed, not a Prometheus server's extras.
# shellcheck disable=SC2086 # $missing is a list of package names
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# The package starts a Prometheus server where an init system runs; CI needs only promtool.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
	$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

command -v promtool >/dev/null 2>&1 || { echo "install-tools: promtool still missing after install" >&2; exit 1; }
command -v kubectl >/dev/null 2>&1 || { echo "install-tools: kubectl still missing after install" >&2; exit 1; }
