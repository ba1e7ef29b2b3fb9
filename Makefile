# PIBL - Proxy Inverso + Balanceador de Carga.
# The source list is the architecture, one job per file and a header per
# module (README.md, Arquitectura), from the listener down to the backends:
#   pibl.cpp         main, config file, listening sockets, signals, reload
#   loop.cpp         event-loop threads: select() bitmaps, parking, accept/reject
#   ev.cpp           the non-blocking exchange the loops run
#   tunnel.cpp       WebSocket tunnels: bytes copied both ways by the loops
#   conn.cpp         a client connection's life, the blocking threads
#   exchange.cpp     one request/answer exchange with blocking I/O
#   http.cpp         HTTP/1.1 messages: parsing, framing, heads, body relay
#   httpdate.cpp     HTTP-dates: the three forms read, the Date field written
#   sock.cpp         socket helpers: timeouts, whole writes
#   cachepolicy.cpp  RFC 9111 rules: what is stored, served, revalidated
#   vary.cpp         Vary: the request values an answer varies on, a URL's variants
#   conditional.cpp  a request's conditionals and Range against a stored answer
#   freshness.cpp    Cache-Control (and targeted fields), Age, Expires parsers
#   refresh.cpp      stale-while-revalidate: the background refresh of an entry
#   cache.cpp        the cache's files: hashed names, TTL, eviction
#   upstream.cpp     backend sockets and the idle connection pool
#   rr.cpp           backend table and round robin
#   health.cpp       active health checks
#   log.cpp          access lines (pibl, combined, json) and PIBL's own lines
#   admin.cpp        the status page
# origin/ is pibl-origin, the demo and test web server (not part of pibl), one job a file:
#   origin.cpp start-up, connection threads, dispatch   io.cpp socket I/O
#   request.cpp its own request parser   reply.cpp answer heads   files.cpp static files
#   routes.cpp the /_ test routes   ws.cpp WebSocket echo and event stream

CXX      ?= g++
CXXFLAGS ?= -O2 -g
CXXFLAGS += -std=c++17 -Wall -Wextra -pthread
LDFLAGS  += -pthread

PIBL_SRCS = pibl.cpp loop.cpp ev.cpp tunnel.cpp conn.cpp exchange.cpp http.cpp httpdate.cpp sock.cpp cachepolicy.cpp vary.cpp conditional.cpp \
            freshness.cpp refresh.cpp \
            cache.cpp upstream.cpp rr.cpp health.cpp log.cpp admin.cpp
HDRS      = pibl.h loop.h ev.h tunnel.h conn.h exchange.h http.h httpdate.h sock.h cachepolicy.h vary.h conditional.h cache.h \
            freshness.h refresh.h \
            upstream.h rr.h health.h log.h admin.h

all: pibl pibl-origin

pibl: $(PIBL_SRCS) $(HDRS)
	$(CXX) $(CXXFLAGS) -o $@ $(PIBL_SRCS) $(LDFLAGS)

ORIGIN_SRCS = origin/origin.cpp origin/io.cpp origin/request.cpp origin/reply.cpp origin/files.cpp \
              origin/routes.cpp origin/ws.cpp

pibl-origin: $(ORIGIN_SRCS) origin/origin.h
	$(CXX) $(CXXFLAGS) -o $@ $(ORIGIN_SRCS) $(LDFLAGS)

# Unit tests link the modules with pibl.cpp's config parser (main left out).
tests/unit: tests/unit.cpp $(PIBL_SRCS) $(HDRS)
	$(CXX) $(CXXFLAGS) -DPIBL_NO_MAIN -I. -o $@ tests/unit.cpp $(PIBL_SRCS) $(LDFLAGS)

unit: tests/unit
	./tests/unit

test: all tests/unit
	./tests/run-tests.sh

# ---- install: the layout of a source build of nginx or HAProxy. DESTDIR stages
# the files (packaging, tests); the paths written into the unit and the man page
# are without it. PIBL_HOME is the unit's working directory (./cache, pibl.log):
# fixed, since StateDirectory=pibl creates it there. pibl-origin, the test
# origin, is not installed. The example config never replaces an existing one,
# and uninstall removes it only while it still equals ./pibl.cfg.
PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= $(PREFIX)/etc
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
PIBL_USER  ?= pibl
CACHE_TTL  ?= 60
INSTALL    ?= install
PIBL_HOME   = /var/lib/pibl
INSTALLED_CFG = $(SYSCONFDIR)/pibl/pibl.cfg
PIBL_VERSION := $(shell sed -n 's/^.define PIBL_VERSION *"\(.*\)"/\1/p' pibl.h)

# The unit and the man page with the paths filled in; a placeholder left is an error.
RENDER = sed -e 's|@PIBL_BIN@|$(SBINDIR)/pibl|g' -e 's|@PIBL_CFG@|$(INSTALLED_CFG)|g' \
             -e 's|@PIBL_HOME@|$(PIBL_HOME)|g' -e 's|@PIBL_TTL@|$(CACHE_TTL)|g' \
             -e 's|@PIBL_USER@|$(PIBL_USER)|g' -e 's|@PIBL_UNIT@|$(SYSTEMDDIR)/pibl.service|g' \
             -e 's|@PIBL_VERSION@|$(PIBL_VERSION)|g'

pibl.service: scripts/pibl.service
pibl.8: docs/pibl.8.in
pibl.service pibl.8:
	$(RENDER) $< >$@.tmp
	@if grep -n '@PIBL_[A-Z_]*@' $@.tmp; then echo "$@: placeholder left" >&2; rm -f $@.tmp; exit 1; fi
	mv $@.tmp $@

install: pibl pibl.service pibl.8
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/pibl \
	    $(DESTDIR)$(SYSTEMDDIR)
	$(INSTALL) -m 0755 pibl $(DESTDIR)$(SBINDIR)/pibl
	$(INSTALL) -m 0644 pibl.8 $(DESTDIR)$(MANDIR)/man8/pibl.8
	$(INSTALL) -m 0644 pibl.service $(DESTDIR)$(SYSTEMDDIR)/pibl.service
	@if [ -e $(DESTDIR)$(INSTALLED_CFG) ]; then \
	    echo "install: kept the existing $(DESTDIR)$(INSTALLED_CFG)"; \
	else \
	    echo "$(INSTALL) -m 0644 pibl.cfg $(DESTDIR)$(INSTALLED_CFG)"; \
	    $(INSTALL) -m 0644 pibl.cfg $(DESTDIR)$(INSTALLED_CFG); \
	fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/pibl $(DESTDIR)$(MANDIR)/man8/pibl.8 $(DESTDIR)$(SYSTEMDDIR)/pibl.service
	@if [ -f $(DESTDIR)$(INSTALLED_CFG) ] && cmp -s pibl.cfg $(DESTDIR)$(INSTALLED_CFG); then \
	    echo "rm -f $(DESTDIR)$(INSTALLED_CFG)"; rm -f $(DESTDIR)$(INSTALLED_CFG); \
	elif [ -e $(DESTDIR)$(INSTALLED_CFG) ]; then \
	    echo "uninstall: kept $(DESTDIR)$(INSTALLED_CFG) (changed since install)"; \
	fi
	@rmdir $(DESTDIR)$(SYSCONFDIR)/pibl 2>/dev/null || true

# Three replicas of www/ on 8081-8083 and PIBL on 8080 (PIBL_PORT, WEB1_PORT..., see the script);
# Ctrl-C stops PIBL, then the replicas.
run: all
	./scripts/run-local.sh

# ---- fuzzing: tests/fuzz.cpp, one libFuzzer binary per parser (needs clang)
FUZZ_CXX     ?= clang++
FUZZ_FLAGS    = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
                -std=c++17 -Wall -Wextra -pthread -DPIBL_NO_MAIN -I.
FUZZ_TARGETS  = request response chunked freshness
FUZZ_BINS     = $(FUZZ_TARGETS:%=tests/fuzz-%)
FUZZ_SECONDS ?= 60

fuzz: $(FUZZ_BINS)

$(FUZZ_BINS): tests/fuzz-%: tests/fuzz.cpp $(PIBL_SRCS) $(HDRS)
	$(FUZZ_CXX) $(FUZZ_FLAGS) -DFUZZ_TARGET=$* -o $@ tests/fuzz.cpp $(PIBL_SRCS)

# Each target runs FUZZ_SECONDS from the seed corpus (new inputs go to a temp folder);
# a crash is kept as tests/fuzz-crash-TARGET-* and fails the run.
fuzz-run: fuzz
	@for t in $(FUZZ_TARGETS); do \
	    work=$$(mktemp -d) || exit 1; \
	    ./tests/fuzz-$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -dict=tests/fuzz-corpus/http.dict -artifact_prefix=tests/fuzz-crash-$$t- \
	        $$work tests/fuzz-corpus/$$t >$$work.log 2>&1; \
	    rc=$$?; \
	    echo "fuzz-$$t: $$(grep -E '^Done [0-9]+ runs' $$work.log) (exit $$rc)"; \
	    [ $$rc -eq 0 ] || tail -n 60 $$work.log; \
	    rm -rf $$work $$work.log; \
	    [ $$rc -eq 0 ] || exit $$rc; \
	done

# ---- the whole suite on AddressSanitizer + UndefinedBehaviorSanitizer builds of pibl,
# pibl-origin and tests/unit (same names; rebuilt normally afterwards). Any sanitizer
# report stops the process (halt_on_error) and is written under SAN_LOGS; a report
# there fails the run even when the tests passed. SUITES: bats files (default: all).
# clang: its UBSan honours log_path (GCC's prints UBSan reports on stderr only).
SAN_CXX  ?= clang++
SAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
SAN_LOGS  = tests/san-logs

asan-test:
	rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	CXX="$(SAN_CXX)" CXXFLAGS="$(SAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" $(MAKE) -B all tests/unit
	@ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:log_path=$(CURDIR)/$(SAN_LOGS)/asan \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(CURDIR)/$(SAN_LOGS)/ubsan \
	./tests/run-tests.sh $(SUITES); rc=$$?; \
	if [ -n "$$(ls -A $(SAN_LOGS))" ]; then \
	    echo "asan-test: sanitizer reports in $(SAN_LOGS):"; head -n 40 $(SAN_LOGS)/*; rc=1; \
	fi; \
	$(MAKE) -B all tests/unit >/dev/null; \
	exit $$rc

clean:
	rm -f pibl pibl-origin tests/unit $(FUZZ_BINS) pibl.service pibl.8
	rm -rf cache $(SAN_LOGS)

.PHONY: all unit test run clean fuzz fuzz-run asan-test install uninstall pibl.service pibl.8
