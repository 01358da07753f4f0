/*
 * Preemption: a batch system announces the end of a job with SIGUSR1 or
 * SIGTERM (Slurm's --signal, PBS's kill sequence), or the job knows its own
 * end time. The next training step agrees on the request across ranks,
 * writes a checkpoint and reports that the host should stop.
 *
 * One process may hold several trainers (two models, or one per
 * sub-communicator), and signal dispositions belong to the whole process, so
 * the handlers are shared: the first trainer that wants them installs them,
 * the last one to go puts back what the process had before (unless the host
 * has installed a handler of its own since). The handler only counts
 * signals; each trainer compares the count with the one it acknowledged, so
 * every trainer sees every signal that arrives while it exists, and a new
 * trainer does not clear another's pending request.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "preempt.h"

static volatile sig_atomic_t signals_received = 0;

/* The registry of trainers holding the handlers; create and free may run on
 * different threads. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t registry_users = 0;
static const int handled[2] = {SIGUSR1, SIGTERM};
static struct sigaction saved[2]; /* the dispositions before the first user */

static void on_signal(int signo)
{
    (void)signo;
    /* Async-signal-safe: one store to a sig_atomic_t. Both signals are masked
     * while the handler runs, so neither interrupts the other's increment;
     * the wrap is by hand because signed overflow is undefined. */
    signals_received = signals_received == SIG_ATOMIC_MAX ? 0 : signals_received + 1;
}

static insitra_status join_registry(insitra_preempt *t)
{
    insitra_status s = INSITRA_STATUS_OK;
    pthread_mutex_lock(&registry_lock);
    if (registry_users == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        for (int i = 0; i < 2; i++) sigaddset(&sa.sa_mask, handled[i]);
        sa.sa_flags = SA_RESTART;
        for (int i = 0; i < 2 && s == INSITRA_STATUS_OK; i++) {
            if (sigaction(handled[i], &sa, &saved[i]) == 0) continue;
            s = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                  "config key 'checkpoint.signals': cannot install the %s handler: %s",
                                  handled[i] == SIGUSR1 ? "SIGUSR1" : "SIGTERM", strerror(errno));
            for (int j = 0; j < i; j++) sigaction(handled[j], &saved[j], NULL);
        }
    }
    if (s == INSITRA_STATUS_OK) {
        registry_users++;
        t->signals_acknowledged = signals_received;
        t->handlers_installed = true;
    }
    pthread_mutex_unlock(&registry_lock);
    return s;
}

static void leave_registry(insitra_preempt *t)
{
    pthread_mutex_lock(&registry_lock);
    if (--registry_users == 0)
        for (int i = 0; i < 2; i++) {
            struct sigaction now;
            if (sigaction(handled[i], NULL, &now) == 0 && now.sa_handler == on_signal)
                sigaction(handled[i], &saved[i], NULL);
        }
    pthread_mutex_unlock(&registry_lock);
    t->handlers_installed = false;
}

insitra_status insitra_preempt_setup(insitra_preempt *t, const insitra_config *cfg)
{
    if (cfg->checkpoint.dir[0] == '\0') return INSITRA_STATUS_OK;
    if (cfg->checkpoint.signals) INSITRA_CHECK(join_registry(t));
    /* The deadline, as an MPI_Wtime value. */
    double remaining = cfg->checkpoint.deadline_seconds > 0 ? cfg->checkpoint.deadline_seconds : 0;
    if (cfg->checkpoint.deadline_env[0] != '\0') {
        const char *value = getenv(cfg->checkpoint.deadline_env);
        char *end = NULL;
        const double job_end = value ? strtod(value, &end) : 0;
        if (!value || end == value || *end != '\0' || job_end <= 0)
            return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                     "config key 'checkpoint.deadline_env': environment variable '%s' is "
                                     "%s%s%s, not the job's end time in Unix seconds",
                                     cfg->checkpoint.deadline_env, value ? "'" : "unset",
                                     value ? value : "", value ? "'" : "");
        const double left = job_end - (double)time(NULL);
        if (remaining == 0 || left < remaining) remaining = left;
    }
    if (remaining > 0 || cfg->checkpoint.deadline_env[0] != '\0')
        t->deadline = MPI_Wtime() + remaining - cfg->checkpoint.deadline_margin_seconds;
    return INSITRA_STATUS_OK;
}

void insitra_preempt_release(insitra_preempt *t)
{
    if (t->handlers_installed) leave_registry(t);
}

bool insitra_preempt_requested(const insitra_preempt *t)
{
    const bool signalled = t->handlers_installed && signals_received != t->signals_acknowledged;
    return signalled || (t->deadline != 0 && MPI_Wtime() >= t->deadline);
}
