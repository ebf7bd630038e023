// Leaks three calls deep through libstdc++ in a production build (g++ -O2 -g,
// no frame pointers), each next to a distractor that gives back what it makes.
// Every caller uses what its callee returns, so no call on a chain is a tail call.
//   leaks-cpp ROUNDS DELAY_MS    ROUNDS rounds, DELAY_MS apart, then exit.
// Files are read from the working directory (input.txt is made here). Each round leaks:
//   Session        main → accept_clients → register_client → create_session → operator new
//                  (kept in the global map `sessions`, never destroyed)
//   string lines   main → ingest_lines → append_line → store_line → std::vector/std::string
//                  (kept in the global vector `lines`)
//   ifstream       main → open_inputs → track_input → open_input → new std::ifstream
//                  (kept open in the global vector `inputs`)
// and makes and deletes the same again through ping_clients, scratch_lines and
// probe_inputs.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#define NOINLINE __attribute__((noinline, noclone))

struct Session {
    int id;
    char peer[200];
    explicit Session(int i) : id(i) { std::snprintf(peer, sizeof peer, "client-%d", i); }
    int weight() const { return id % 7 + peer[0]; }
};

// --- Session ------------------------------------------------------------------

// What a round keeps lives as long as the process: like many servers' globals,
// made once and never destroyed (no destructor frees it at exit).
auto &sessions = *new std::map<int, Session *>;

NOINLINE Session *create_session(int id) {
    Session *s = new Session(id);
    s->peer[199] = 0;
    return s;
}

NOINLINE int register_client(int id) {
    Session *s = create_session(id);
    sessions[id] = s;
    return s->weight();
}

NOINLINE int accept_clients(int round) { return register_client(round) + 1; }

NOINLINE Session *create_ping_session(int id) {
    Session *s = new Session(-id);
    s->peer[199] = 0;
    return s;
}

NOINLINE int answer_ping(int id) {
    Session *s = create_ping_session(id);
    int w = s->weight();
    delete s;
    return w;
}

NOINLINE int ping_clients(int round) { return answer_ping(round) + 2; }

// --- strings in a vector --------------------------------------------------------

auto &lines = *new std::vector<std::string>;

NOINLINE size_t store_line(int id) {
    lines.push_back(std::string(100 + id % 50, 'a' + id % 26));
    return lines.back().size();
}

NOINLINE size_t append_line(int id) { return store_line(id) + lines.size(); }

NOINLINE size_t ingest_lines(int round) { return append_line(round) + 3; }

NOINLINE size_t store_scratch_line(std::vector<std::string> &scratch, int id) {
    scratch.push_back(std::string(100 + id % 50, 'z'));
    return scratch.back().size();
}

NOINLINE size_t scratch_line(int id) {
    std::vector<std::string> scratch;
    size_t n = 0;
    for (int i = 0; i < 8; i++) n += store_scratch_line(scratch, id + i);
    return n + scratch.size();
}

NOINLINE size_t scratch_lines(int round) { return scratch_line(round) + 4; }

// --- ifstream -------------------------------------------------------------------

auto &inputs = *new std::vector<std::ifstream *>;

NOINLINE std::ifstream *open_input(const char *path) {
    std::ifstream *in = new std::ifstream(path);
    if (!in->is_open()) {
        std::perror(path);
        std::exit(1);
    }
    return in;
}

NOINLINE int track_input(const char *path) {
    std::ifstream *in = open_input(path);
    inputs.push_back(in);
    return in->peek();
}

NOINLINE int open_inputs() { return track_input("input.txt") + 5; }

NOINLINE std::ifstream *open_probe_input(const char *path) {
    std::ifstream *in = new std::ifstream(path);
    if (!in->is_open()) {
        std::perror(path);
        std::exit(1);
    }
    return in;
}

NOINLINE int check_input(const char *path) {
    std::ifstream *in = open_probe_input(path);
    int c = in->peek();
    delete in;
    return c;
}

NOINLINE int probe_inputs() { return check_input("input.txt") + 6; }

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: leaks-cpp ROUNDS DELAY_MS\n");
        return 2;
    }
    int rounds = std::atoi(argv[1]), delay_ms = std::atoi(argv[2]);
    if (std::FILE *f = std::fopen("input.txt", "w")) {
        std::fputs("input\n", f);
        std::fclose(f);
    }
    long sum = 0;
    for (int i = 0; i < rounds; i++) {
        sum += accept_clients(i);
        sum += ping_clients(i);
        sum += ingest_lines(i);
        sum += scratch_lines(i);
        sum += open_inputs();
        sum += probe_inputs();
        usleep(delay_ms * 1000);
    }
    std::printf("done %ld\n", sum);
    return 0;
}
