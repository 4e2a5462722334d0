# The test command of README.md. It installs the system packages the tests use as
# oracles and peers when missing (openssl, curl, python3 for a test backend, testssl.sh,
# pebble as the ACME server, aiosmtpd as the SMTP server, python3-websockets as WebSocket
# peers, python3-cryptography as an independent AES-GCM for sealed values, nghttp as an
# HTTP/2 client, chromium for the status page, systemd-analyze for the unit file, etcd for
# the cluster tests, knot and nsupdate/dig for DNS-01, and protoc with protobuf's own .proto files (libprotobuf-dev, only
# recommended by protobuf-compiler), which the etcd client's build needs), then runs
# every test against the real binary, built with the failpoints feature so crash-safety
# tests can stop it mid-write.
# command:package pairs
APT_PACKAGES := openssl:openssl curl:curl python3:python3 testssl:testssl.sh pebble:pebble pebble-challtestsrv:pebble \
	nghttp:nghttp2-client chromium:chromium systemd-analyze:systemd \
	etcd:etcd-server etcdctl:etcd-client protoc:protobuf-compiler knotd:knot nsupdate:bind9-dnsutils

.PHONY: test lint deps

test: deps
	cargo test --features failpoints

lint: deps
	cargo fmt --all -- --check
	cargo clippy --all-targets --features failpoints -- -D warnings

deps:
	@missing=""; for cp in $(APT_PACKAGES); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp#*:}"; done; \
	/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing="$$missing python3-aiosmtpd"; \
	/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1 || missing="$$missing python3-websockets"; \
	/usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || missing="$$missing python3-cryptography"; \
	/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || missing="$$missing python3-prometheus-client"; \
	[ -f /usr/include/google/protobuf/descriptor.proto ] || missing="$$missing libprotobuf-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
