/* Leaks three calls deep in a production build (gcc -O2 -g or -O1 -g, no frame
 * pointers), each next to a distractor of the same shape that gives back what it
 * makes. No call on a chain is in tail position: every caller uses what its
 * callee returns, so every frame is on the stack at the allocation.
 *   leaks ROUNDS DELAY_MS    ROUNDS rounds, DELAY_MS apart, then exit.
 * Files are made in the working directory. Each round leaks:
 *   heap    main → serve_requests → handle_request → build_record → malloc
 *   FILE    main → run_logger → rotate_log → open_log → fopen
 *   open    main → load_configs → read_config → open_config_file → open
 *   openat  main → scan_spool → scan_spool_dir → open_spool_entry → openat
 * and makes and frees the same again through serve_pings, probe_logger,
 * check_configs and sweep_spool. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))
#define MAX_ROUNDS 4096
#define RECORD_SIZE 512

static int spool; /* the directory openat works in */

static void fail(const char *what) {
    perror(what);
    exit(1);
}

/* --- heap ------------------------------------------------------------------ */

char *records[MAX_ROUNDS];
size_t nrecords;

NOINLINE char *build_record(int id) {
    char *r = malloc(RECORD_SIZE);
    snprintf(r, RECORD_SIZE, "record %d", id);
    return r;
}

NOINLINE size_t handle_request(int id) {
    char *r = build_record(id);
    records[nrecords++] = r;
    return strlen(r);
}

NOINLINE size_t serve_requests(int round) { return handle_request(round) + 1; }

NOINLINE char *build_reply(int id) {
    char *r = malloc(RECORD_SIZE);
    snprintf(r, RECORD_SIZE, "pong %d", id);
    return r;
}

NOINLINE size_t handle_ping(int id) {
    char *r = build_reply(id);
    size_t n = strlen(r);
    free(r);
    return n;
}

NOINLINE size_t serve_pings(int round) { return handle_ping(round) + 2; }

/* --- FILE ------------------------------------------------------------------ */

FILE *logs[MAX_ROUNDS];
size_t nlogs;

NOINLINE FILE *open_log(int id) {
    char name[64];
    snprintf(name, sizeof name, "log-%d.txt", id);
    FILE *f = fopen(name, "w");
    if (!f) fail(name);
    return f;
}

NOINLINE int rotate_log(int id) {
    FILE *f = open_log(id);
    logs[nlogs++] = f;
    return fileno(f);
}

NOINLINE int run_logger(int round) { return rotate_log(round) + 3; }

NOINLINE FILE *open_probe_log(void) {
    FILE *f = fopen("probe.txt", "w");
    if (!f) fail("probe.txt");
    return f;
}

NOINLINE int check_log(void) {
    FILE *f = open_probe_log();
    int fd = fileno(f);
    fclose(f);
    return fd;
}

NOINLINE int probe_logger(void) { return check_log() + 4; }

/* --- open ------------------------------------------------------------------ */

int configs[MAX_ROUNDS];
size_t nconfigs;

NOINLINE int open_config_file(void) {
    int fd = open("config.txt", O_CREAT | O_RDONLY, 0644);
    if (fd < 0) fail("config.txt");
    return fd;
}

NOINLINE int read_config(void) {
    int fd = open_config_file();
    configs[nconfigs++] = fd;
    return fd;
}

NOINLINE int load_configs(void) { return read_config() + 5; }

NOINLINE int open_temp_file(void) {
    int fd = open("temp.txt", O_CREAT | O_RDONLY, 0644);
    if (fd < 0) fail("temp.txt");
    return fd;
}

NOINLINE int read_temp_config(void) {
    int fd = open_temp_file();
    close(fd);
    return fd;
}

NOINLINE int check_configs(void) { return read_temp_config() + 6; }

/* --- openat ---------------------------------------------------------------- */

int entries[MAX_ROUNDS];
size_t nentries;

NOINLINE int open_spool_entry(int dir) {
    int fd = openat(dir, "entry.txt", O_CREAT | O_RDONLY, 0644);
    if (fd < 0) fail("entry.txt");
    return fd;
}

NOINLINE int scan_spool_dir(int dir) {
    int fd = open_spool_entry(dir);
    entries[nentries++] = fd;
    return fd;
}

NOINLINE int scan_spool(void) { return scan_spool_dir(spool) + 7; }

NOINLINE int open_sweep_entry(int dir) {
    int fd = openat(dir, "sweep.txt", O_CREAT | O_RDONLY, 0644);
    if (fd < 0) fail("sweep.txt");
    return fd;
}

NOINLINE int sweep_spool_dir(int dir) {
    int fd = open_sweep_entry(dir);
    close(fd);
    return fd;
}

NOINLINE int sweep_spool(void) { return sweep_spool_dir(spool) + 8; }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: leaks ROUNDS DELAY_MS\n");
        return 2;
    }
    int rounds = atoi(argv[1]), delay_ms = atoi(argv[2]);
    if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
    spool = open(".", O_RDONLY | O_DIRECTORY);
    long sum = 0;
    for (int i = 0; i < rounds; i++) {
        sum += serve_requests(i);
        sum += serve_pings(i);
        sum += run_logger(i);
        sum += probe_logger();
        sum += load_configs();
        sum += check_configs();
        sum += scan_spool();
        sum += sweep_spool();
        usleep(delay_ms * 1000);
    }
    printf("done %ld\n", sum);
    return 0;
}
