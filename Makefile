# The two commands the README opens with.
#   make demo   - install lapstream and show the Beijing 2022 women's team pursuit final live
#   make test   - install what the tests need (pip, Debian's promtool) and run them all
PYTHON ?= python3

.PHONY: demo test deps bench

demo:
	$(PYTHON) -m pip install --quiet ".[embedded]"
	lapstream demo

deps:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package, for the browser test; Playwright drives it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(PYTHON) -m pip install --quiet -e ".[test]"

test: deps
	$(PYTHON) -m pytest -q

bench: deps
	$(PYTHON) bench/bench_process.py
	$(PYTHON) bench/bench_kafka.py
