/*
 * health.h - active health checks of the backends (health.cpp).
 */
#ifndef PIBL_HEALTH_H
#define PIBL_HEALTH_H

#define PROBE_HEAD_MAX       8192     /* a health check answer's head -> bad answer */

/* Start the active health check thread (it idles while health_check is unset). */
int health_start(void);

#endif
