/* Threads that never end beside threads that do: a service that starts a
 * detached worker per job and never stops them, and a pool it joins.
 *
 *   threads JOBS POOLED LINGER_MS
 *
 * Starts JOBS detached threads from start_job() (each waits forever), and
 * POOLED threads from run_pool() that it joins, then lingers and exits.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static void *wait_forever(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

static void *work_briefly(void *arg) {
    usleep(1000);
    return arg;
}

__attribute__((noinline)) void start_job(void) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&t, &attr, wait_forever, NULL);
    pthread_attr_destroy(&attr);
}

__attribute__((noinline)) void run_pool(int n) {
    pthread_t pool[64];
    for (int i = 0; i < n && i < 64; i++) pthread_create(&pool[i], NULL, work_briefly, NULL);
    for (int i = 0; i < n && i < 64; i++) pthread_join(pool[i], NULL);
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int jobs = atoi(argv[1]), pooled = atoi(argv[2]), linger = atoi(argv[3]);
    usleep(300 * 1000);
    for (int i = 0; i < jobs; i++) {
        start_job();
        run_pool(pooled);
        usleep(20 * 1000);
    }
    usleep(linger * 1000);
    return 0;
}
