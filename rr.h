/*
 * rr.h - the backend table (rr.cpp): the rotation of the config's backends,
 * smooth weighted round robin, up/down marks and per-backend counters.
 */
#ifndef PIBL_RR_H
#define PIBL_RR_H

#include "pibl.h"

#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

/* What the operator set at run time from the status page (admin actions);
 * RR_ADMIN_NONE follows the config file. */
enum rr_admin { RR_ADMIN_NONE, RR_ADMIN_READY, RR_ADMIN_DRAIN, RR_ADMIN_MAINT };

/* A backend's state as shown: up, down (passive or health marks), drain
 * (configured or set: no new requests), maint (disabled: no requests and
 * no health checks). */
enum rr_state { RR_UP, RR_DOWN, RR_DRAIN, RR_MAINT };

/* Counters of one backend, for the status page. */
struct rr_stats {
    const char *name;
    const char *address;           /* "host:port" as written */
    int weight;
    int drain;                     /* drain in the config (or weight=0) */
    int admin;                     /* enum rr_admin */
    int state;                     /* enum rr_state */
    time_t state_since;            /* wall clock, when the state began */
    int passive_down;              /* failed, and has not answered since (it is
                                      skipped for down_time, then retried) */
    int health_down;               /* taken out by health checks */
    uint64_t requests;             /* exchanges sent to it */
    uint64_t failures;             /* of those, failed */
    uint64_t check_failures;       /* failed health probes */
    uint64_t answers[4];           /* exchanges it ended with 2xx, 3xx, 4xx, 5xx */
    uint64_t bytes_in;             /* request bytes sent to it */
    uint64_t bytes_out;            /* answer body bytes it sent */
    int active;                    /* connections to it in use now */
    time_t check_at;               /* last health probe (wall clock), 0 = none */
    int check_ok;                  /* its result */
    const char *check_detail;      /* why it failed (static), or NULL */
    const char *last_error;        /* NULL if none */
    double avg_ms;                 /* latency to the answer head */
    double p99_ms;
    int tunnels;                   /* WebSocket tunnels open to it now */
};

#define RR_CHANGE_NAMES      256      /* names listed per kind of change, cut past it */

/* What rr_configure() changed, for the reload line. */
struct rr_changes {
    int added, removed, changed;   /* backends, by name */
    int removed_slots[MAX_BACKENDS];   /* their idle connections must go: */
    int n_removed_slots;           /* removed, or now at another address */
    char names[3][RR_CHANGE_NAMES];    /* added, removed, changed: "web4 web5" */
};

/*
 * Resolve "host:port" or "[v6]:port" with getaddrinfo into out.
 * Returns 0, or -1 with the reason in err.
 */
int rr_resolve(const char *spec, int weight, struct backend_conf *out, char *err, size_t err_len);

/*
 * Make cfg's backend list the live rotation (start-up and reload). A name
 * already known keeps its slot, marks, counters and run-time admin state
 * (the admin state is cleared when the line's weight or drain changed).
 * ch says what changed. Returns 0, or -1 when no slot is free.
 */
int rr_configure(const struct pibl_config *cfg, struct rr_changes *ch);

/* Number of backends in the rotation. */
int rr_count(void);

/* The rotation's slots in config order; returns how many. */
int rr_active_slots(int *slots, int max);

/*
 * Pick the next backend by smooth weighted round robin (strict round robin
 * when weights are equal), skipping those marked down, drained or disabled
 * and those in the tried mask (bit i = slot i). Returns the slot, or -1
 * when none is left. Never blocks on I/O.
 */
int rr_next(uint64_t tried);

/* Passive marks: down for down_time after a failure (why: a static
 * reason), up after a success. Both log the change of state. */
void rr_mark_down(int i, const char *why);
void rr_mark_up(int i);

/* Active mark from health checks (1 = out of rotation); going back to 0
 * also clears a passive mark. */
void rr_set_health(int i, int down);

/* Backends in the rotation other than i that may take requests (not down,
 * drained or disabled). */
int rr_others_up(int i);

/* 1 if slot i is marked down (either way). */
int rr_is_down(int i);

/* 1 if slot i is disabled from the status page (no health checks either). */
int rr_is_maint(int i);

/* The slot of the backend called name in the rotation, or -1. */
int rr_find(const char *name);

/* Set slot i's run-time admin state (enum rr_admin); logs who did it. */
void rr_set_admin(int i, int admin, const char *who);

/* 1 if slot i is in the current config. */
int rr_is_active(int i);

/* Address k of slot i for connect() (NULL past the last), its name (NAME,
 * or "host:port"), and its "host:port" as written (a Host field). */
const struct sockaddr *rr_addr(int i, int k, socklen_t *len);
const char *rr_name(int i);
const char *rr_address(int i);

/* Count one exchange with slot i: ok or failed (with a static reason). */
void rr_record(int i, int ok, int64_t latency_us, const char *error);

/* An exchange sent to slot i ended with status, after bytes_in request
 * bytes went to it and bytes_out answer body bytes came back. */
void rr_answered(int i, int status, uint64_t bytes_in, uint64_t bytes_out);

/* A health probe of slot i: ok, or failed with why (static). */
void rr_check_result(int i, int ok, const char *why);

/* A connection to slot i was taken into use (+1) or given up (-1). */
void rr_conns(int i, int delta);

/* A tunnel to slot i opened (+1) or ended (-1). */
void rr_tunnels(int i, int delta);

/* Read slot i's counters. */
void rr_stats(int i, struct rr_stats *st);

#endif
