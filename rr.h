/*
 * rr.h - the backend table (rr.cpp): the rotation of the config's backends,
 * smooth weighted round robin, up/down marks and per-backend counters.
 */
#ifndef PIBL_RR_H
#define PIBL_RR_H

#include "pibl.h"

#include <stdint.h>
#include <sys/socket.h>

/* Counters of one backend, for the status page. */
struct rr_stats {
    const char *name;
    int weight;
    int passive_down;              /* skipped after a failure, for down_time */
    int health_down;               /* taken out by health checks */
    uint64_t requests;             /* exchanges sent to it */
    uint64_t failures;             /* of those, failed */
    const char *last_error;        /* NULL if none */
    double avg_ms;                 /* latency to the answer head */
    double p99_ms;
    int tunnels;                   /* WebSocket tunnels open to it now */
};

/*
 * Resolve "host:port" or "[v6]:port" with getaddrinfo into out.
 * Returns 0, or -1 with the reason in err.
 */
int rr_resolve(const char *spec, int weight, struct backend_conf *out, char *err, size_t err_len);

/*
 * Make cfg's backend list the live rotation (start-up and reload). Slots
 * leaving the rotation are listed in removed[] (the caller drops their idle
 * connections). Returns 0, or -1 when no slot is free.
 */
int rr_configure(const struct pibl_config *cfg, int *removed, int *n_removed);

/* Number of backends in the rotation. */
int rr_count(void);

/* The rotation's slots in config order; returns how many. */
int rr_active_slots(int *slots, int max);

/*
 * Pick the next backend by smooth weighted round robin (strict round robin
 * when weights are equal), skipping those marked down and those in the
 * tried mask (bit i = slot i). Returns the slot, or -1 when none is left.
 * Never blocks on I/O.
 */
int rr_next(uint64_t tried);

/* Passive marks: down for down_time after a failure / up after a success. */
void rr_mark_down(int i);
void rr_mark_up(int i);

/* Active mark from health checks (1 = out of rotation). */
void rr_set_health(int i, int down);

/* Backends in the rotation other than i that are not marked down. */
int rr_others_up(int i);

/* 1 if slot i is marked down (either way). */
int rr_is_down(int i);

/* 1 if slot i is in the current config. */
int rr_is_active(int i);

/* Address k of slot i for connect() (NULL past the last), and its
 * printable "host:port" name. */
const struct sockaddr *rr_addr(int i, int k, socklen_t *len);
const char *rr_name(int i);

/* Count one exchange with slot i: ok or failed (with a static reason). */
void rr_record(int i, int ok, int64_t latency_us, const char *error);

/* Note a failure seen outside a request (a health probe): last error only. */
void rr_set_error(int i, const char *error);

/* A tunnel to slot i opened (+1) or ended (-1). */
void rr_tunnels(int i, int delta);

/* Read slot i's counters. */
void rr_stats(int i, struct rr_stats *st);

#endif
