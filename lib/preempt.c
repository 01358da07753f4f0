/*
 * Preemption: a batch system announces the end of a job with SIGUSR1 or
 * SIGTERM (Slurm's --signal, PBS's kill sequence), or the job knows its own
 * end time. The handlers only set a flag; the next training step agrees on it
 * across ranks, writes a checkpoint and reports that the host should stop.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "trainer.h"

static volatile sig_atomic_t signal_seen = 0;
static struct sigaction previous_usr1, previous_term;

static void on_signal(int signo)
{
    (void)signo;
    signal_seen = 1;
}

insitra_status insitra_preempt_setup(insitra_trainer *t)
{
    const insitra_config *cfg = &t->cfg;
    if (cfg->checkpoint.dir[0] == '\0') return INSITRA_STATUS_OK;
    if (cfg->checkpoint.signals) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        if (sigaction(SIGUSR1, &sa, &previous_usr1) != 0 || sigaction(SIGTERM, &sa, &previous_term) != 0)
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "config key 'checkpoint.signals': cannot install the SIGUSR1/SIGTERM handlers");
        signal_seen = 0;
        t->handlers_installed = true;
    }
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

void insitra_preempt_release(insitra_trainer *t)
{
    if (!t->handlers_installed) return;
    sigaction(SIGUSR1, &previous_usr1, NULL);
    sigaction(SIGTERM, &previous_term, NULL);
    t->handlers_installed = false;
}

bool insitra_preempt_requested(const insitra_trainer *t)
{
    return signal_seen || (t->deadline != 0 && MPI_Wtime() >= t->deadline);
}
