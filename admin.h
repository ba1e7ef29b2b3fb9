/*
 * admin.h - the status page (admin.cpp): HTML, /status.json, /status.csv,
 * /metrics, and drain/enable/disable actions on backends.
 */
#ifndef PIBL_ADMIN_H
#define PIBL_ADMIN_H

#define ADMIN_HEAD_MAX       8192     /* a status page request head */
#define ADMIN_FORM_MAX       1024     /* the form body of an action (POST /backend) */
#define ADMIN_TIMEOUT_S      5        /* s, a status page client to send and read */
#define ADMIN_OUT_MAX        (256 * 1024)  /* one status page answer */
#define MAX_ADMIN_CONNS      32       /* concurrent status page clients */

/* Serve one status page client (HTML /, JSON /status.json, CSV /status.csv,
 * /metrics, and the action POST /backend); closes fd. */
void admin_serve(int fd);

/* Called about once a second by the select() loop: samples the request rate. */
void admin_tick(void);

#endif
