/*
 * conditional.h - the client's conditionals and Range against a stored
 * answer (conditional.cpp), RFC 9110 13 and 14.
 * Return convention: 1 or 0 for yes/no; enum values where there are three.
 */
#ifndef PIBL_CONDITIONAL_H
#define PIBL_CONDITIONAL_H

#include <stdint.h>

struct http_request;
struct http_response;

/* 1 when request r's If-None-Match (weak comparison) or, without it, its
 * If-Modified-Since says the client's copy of stored is current
 * (RFC 9110 13.2.2), 0 otherwise. */
int cond_client_has_current(const struct http_request *r, const struct http_response *stored);

/* What a GET's Range asks of a stored answer. */
enum cond_range { COND_RANGE_WHOLE, COND_RANGE_PART, COND_RANGE_UNSATISFIABLE };

/*
 * The Range of request r for a stored 200 of total bytes (RFC 9110 14.1.2,
 * 14.2): one range "a-b", "a-" or "-n" gives COND_RANGE_PART with the bytes
 * [*from, *from + *len); one that starts past the end (or "-0"),
 * COND_RANGE_UNSATISFIABLE. No Range, several ranges, a malformed field,
 * another unit, or an If-Range that does not hold (a strong entity tag or
 * exactly the Last-Modified date) give COND_RANGE_WHOLE: the full 200.
 */
int cond_range(const struct http_request *r, const struct http_response *stored, uint64_t total,
    uint64_t *from, uint64_t *len);

#endif
