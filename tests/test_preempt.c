/*
 * Signal handlers shared by several trainers (issue #16): every trainer that
 * asks for them sees every SIGUSR1/SIGTERM that arrives while it exists; a
 * second trainer neither overwrites the handlers the first one saved nor
 * swallows its pending signal; when the last one is freed the process's own
 * dispositions are back, so SIGTERM terminates again.
 */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "insitra.h"
#include "test_util.h"
#include "trainer.h"

static insitra_trainer *make(insitra_test *T, const char *dir, const char *signals)
{
    insitra_config *cfg = NULL;
    if (!EXPECT_OK(T, insitra_config_create(&cfg), "config_create")) return NULL;
    const char *kv[][2] = {{"model.seq_len", "4"}, {"model.in_features", "2"}, {"model.out_features", "2"},
                           {"model.d_model", "8"}, {"model.n_layers", "1"},    {"model.n_heads", "2"},
                           {"training.batch_size", "2"}, {"data.capacity", "4"},
                           {"checkpoint.dir", dir},      {"checkpoint.signals", signals}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) insitra_test_set(T, cfg, kv[i][0], "%s", kv[i][1]);
    insitra_trainer *t = NULL;
    EXPECT_OK(T, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create");
    insitra_config_free(cfg);
    return t;
}

static void (*handler_of(int signo))(int)
{
    struct sigaction now;
    sigaction(signo, NULL, &now);
    return now.sa_handler;
}

/* Whether SIGTERM, raised in a child that inherits this process's
 * dispositions, terminates it. */
static int sigterm_terminates(void)
{
    fflush(stdout);
    const pid_t child = fork();
    if (child == 0) {
        raise(SIGTERM);
        _exit(0); /* survived: a handler caught it */
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child) return -1;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM;
}

static void host_handler(int signo) { (void)signo; }

int main(int argc, char **argv)
{
    insitra_test test = insitra_test_begin(&argc, &argv, "preempt");
    insitra_test *T = &test;
    char dir[] = "/tmp/insitra-preempt-XXXXXX";
    EXPECT(T, mkdtemp(dir) != NULL, "mkdtemp");
    void (*usr1_before)(int) = handler_of(SIGUSR1), (*term_before)(int) = handler_of(SIGTERM);
    EXPECT(T, sigterm_terminates() == 1, "SIGTERM terminates before any trainer");

    /* One trainer: the handlers are in, a signal is seen. */
    insitra_trainer *a = make(T, dir, "true");
    EXPECT(T, handler_of(SIGTERM) != term_before && handler_of(SIGUSR1) != usr1_before,
           "the first trainer installs the handlers");
    EXPECT(T, !insitra_preempt_requested(&a->preempt), "no signal yet");
    raise(SIGUSR1);
    EXPECT(T, insitra_preempt_requested(&a->preempt), "a sees the SIGUSR1 raised while it alone exists");

    /* A second one keeps a's pending signal, and sees none from before it existed. */
    insitra_trainer *b = make(T, dir, "true");
    EXPECT(T, insitra_preempt_requested(&a->preempt), "b's creation swallowed a's pending signal");
    EXPECT(T, !insitra_preempt_requested(&b->preempt), "b sees a signal from before it existed");
    raise(SIGUSR1);
    EXPECT(T, insitra_preempt_requested(&a->preempt) && insitra_preempt_requested(&b->preempt), "both see the second SIGUSR1");

    /* A trainer without signals takes no part. */
    insitra_trainer *c = make(T, dir, "false");
    EXPECT(T, !insitra_preempt_requested(&c->preempt), "a trainer with checkpoint.signals = false sees no signal");
    insitra_trainer_free(c);

    /* Freeing the first keeps the handlers for the second; the last restores. */
    insitra_trainer_free(a);
    EXPECT(T, handler_of(SIGTERM) != term_before, "freeing a removed b's handlers");
    if (handler_of(SIGTERM) != term_before) { /* else this process would end here */
        raise(SIGTERM);
        EXPECT(T, insitra_preempt_requested(&b->preempt), "b sees the SIGTERM after a is gone");
    }
    EXPECT(T, sigterm_terminates() == 0, "SIGTERM terminates while b exists");
    insitra_trainer_free(b);
    EXPECT(T, handler_of(SIGTERM) == term_before && handler_of(SIGUSR1) == usr1_before,
           "the original dispositions are back after the last trainer");
    EXPECT(T, sigterm_terminates() == 1, "SIGTERM terminates after both trainers are freed");

    /* A handler the host installs while a trainer lives is its own: freeing
     * the trainer leaves it in place. */
    insitra_trainer *d = make(T, dir, "true");
    struct sigaction host;
    memset(&host, 0, sizeof host);
    host.sa_handler = host_handler;
    sigemptyset(&host.sa_mask);
    sigaction(SIGUSR1, &host, NULL);
    insitra_trainer_free(d);
    EXPECT(T, handler_of(SIGUSR1) == host_handler, "freeing the trainer replaced the host's handler");
    EXPECT(T, handler_of(SIGTERM) == term_before, "SIGTERM restored");
    signal(SIGUSR1, usr1_before);

    rmdir(dir);
    return insitra_test_end(T);
}
