# PIBL - Proxy Inverso + Balanceador de Carga.
# The source list is the architecture: one file per job (see README.md).

CXX      ?= g++
CXXFLAGS ?= -O2 -g
CXXFLAGS += -std=c++17 -Wall -Wextra -pthread
LDFLAGS  += -pthread

PIBL_SRCS = pibl.cpp http.cpp cache.cpp rr.cpp log.cpp health.cpp admin.cpp
HDRS      = pibl.h

all: pibl pibl-origin

pibl: $(PIBL_SRCS) $(HDRS)
	$(CXX) $(CXXFLAGS) -o $@ $(PIBL_SRCS) $(LDFLAGS)

pibl-origin: origin.cpp
	$(CXX) $(CXXFLAGS) -o $@ origin.cpp $(LDFLAGS)

# Unit tests link the modules with pibl.cpp's config parser (main left out).
tests/unit: tests/unit.cpp $(PIBL_SRCS) $(HDRS)
	$(CXX) $(CXXFLAGS) -DPIBL_NO_MAIN -I. -o $@ tests/unit.cpp $(PIBL_SRCS) $(LDFLAGS)

unit: tests/unit
	./tests/unit

test: all tests/unit
	./tests/run-tests.sh

# Three replicas of www/ on 8081-8083 and PIBL on 8080; Ctrl-C stops all.
run: all
	./scripts/run-local.sh

clean:
	rm -f pibl pibl-origin tests/unit
	rm -rf cache

.PHONY: all unit test run clean
