# Two commands on a fresh Debian 12 machine: `make lab-run` and `make test`. Each sets itself up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
LAB     := $(VENV)/bin/lab
export LAB_URI ?= qemu:///system

.PHONY: setup host venv libvirt image lab-run test check test-unit test-libvirt test-live test-scenarios test-releases test-faults test-hosts bench clean

setup: host venv libvirt

host:
	@bash scripts/host-setup.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

libvirt: host
	@bash scripts/start-libvirt.sh

image: setup
	$(LAB) images build debian12

lab-run: image
	$(LAB) run $(SCENARIOS)

test: image
	$(PY) -m pytest -v -rs --durations=20 tests

# The fast tier: no libvirt, no guest (under a minute); it installs the host tools its tests read disks with.
check: host venv
	$(PY) -m pytest -q -m 'not libvirt and not live' tests

test-unit: check

test-libvirt: libvirt
	$(PY) -m pytest -v -m libvirt tests

test-live: image
	$(PY) -m pytest -v -m live tests

# Every base scenario on a real guest (make test boots the representative ones).
test-scenarios: image
	$(PY) -m pytest -v -rs tests/test_live.py --all-scenarios

# The seed's kdump scenarios on every Debian release (images/releases.toml; make test boots one of them).
test-releases: image
	$(PY) -m pytest -v -rs tests/test_releases.py --all-scenarios

# Every fault-injection point with every signal (make test runs a representative six).
test-faults: image
	$(PY) -m pytest -v -rs tests/test_faults.py --all-faults

# The seed's scenarios spread over qemu:///system and qemu+ssh to this machine (make test runs a host dropping mid-matrix).
test-hosts: image
	$(PY) -m pytest -v -rs tests/test_many_hosts.py --all-scenarios

bench: image
	$(PY) -m lab.bench --out bench.json

clean: venv
	$(LAB) clean
