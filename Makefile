# The two commands the README opens with.
#   make demo   - install lapstream and show the Beijing 2022 women's team pursuit final live
#   make test   - install what the tests need (pip, Debian's promtool and amtool, npm's @asyncapi/specs) and run them all
PYTHON ?= python3
# the official AsyncAPI JSON Schemas, for tests/test_asyncapi.py (build/ is not in git)
ASYNCAPI_SPECS = build/npm/node_modules/@asyncapi/specs

.PHONY: demo test deps bench

demo:
	$(PYTHON) -m pip install --quiet ".[embedded]"
	lapstream demo

deps:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v amtool >/dev/null 2>&1 || { \
	  echo "installing amtool (Debian package prometheus-alertmanager; checks deploy/alertmanager/)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null; }
	@{ command -v stunnel4 && command -v openssl; } >/dev/null 2>&1 || { \
	  echo "installing stunnel4 and openssl (TLS in front of the test broker; deploy/gen_secrets.sh)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stunnel4 openssl >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package, for the browser test; Playwright drives it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(PYTHON) -m pip install --quiet -e ".[test]"
	@test -f $(ASYNCAPI_SPECS)/schemas/3.0.0.json || { \
	  command -v npm >/dev/null 2>&1 || { echo "installing npm (Debian package npm)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; }; \
	  echo "installing the official AsyncAPI JSON Schemas (npm @asyncapi/specs) into build/npm"; \
	  npm install --silent --no-save --no-audit --no-fund --prefix build/npm @asyncapi/specs@6.11.1 >/dev/null; }

test: deps
	$(PYTHON) -m pytest -q

bench: deps
	$(PYTHON) bench/bench_process.py
	$(PYTHON) bench/bench_kafka.py
