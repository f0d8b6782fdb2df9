// Co-simulation harness of the board SoC (module `sim`, see tessera/hw/boards/soc.py).
//
// Drives the SoC's two clocks at their real ratio and its reset, and connects its byte-level
// serial port to one TCP client on 127.0.0.1: bytes received from the client are offered on
// serial_sink_* (one per sys cycle at most), bytes the SoC offers on serial_source_* are sent
// to the client. The host driver talks to it with pyserial's "socket://127.0.0.1:PORT", the
// same host-link code as for a real board.
//
// Usage: tessera_soc_sim SYS_HZ CORE_HZ [PORT]   (PORT 0 or absent: any free port)
// Prints "PORT <n>" on stdout once listening; exits when the client disconnects, on SIGTERM,
// or when its parent process dies.

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <vector>

#include "Vsim.h"
#include "verilated.h"

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int) { g_stop = 1; }

static double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SYS_HZ CORE_HZ [PORT]\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    const double sys_hz = atof(argv[1]), core_hz = atof(argv[2]);
    const int want_port = argc > 3 ? atoi(argv[3]) : 0;
    if (!(sys_hz > 0) || !(core_hz > 0)) {
        fprintf(stderr, "clock frequencies must be positive\n");
        return 2;
    }
    // Half periods in femtoseconds keep the ratio exact enough for any pair of clocks.
    const uint64_t sys_half = (uint64_t)(5e14 / sys_hz), core_half = (uint64_t)(5e14 / core_hz);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(want_port);
    if (bind(lfd, (sockaddr*)&addr, sizeof addr) || listen(lfd, 1)) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", want_port, strerror(errno));
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (sockaddr*)&addr, &alen);
    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vsim>(ctx.get());
    top->sim_trace = 0;
    top->sys_rst = 1;
    top->sys_clk = 0;
    top->core_clk = 0;
    top->serial_sink_valid = 0;
    top->serial_source_ready = 1;
    top->eval();

    // Wait for the host (still reacting to SIGTERM).
    int fd = -1;
    while (fd < 0 && !g_stop) {
        pollfd p{lfd, POLLIN, 0};
        if (poll(&p, 1, 100) > 0) fd = accept(lfd, nullptr, nullptr);
    }
    if (fd < 0) return 0;
    close(lfd);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    std::deque<uint8_t> to_soc;
    std::vector<uint8_t> from_soc;
    uint8_t buf[65536];
    uint64_t t = 0, next_sys = sys_half, next_core = core_half, sys_cycles = 0;
    double last_traffic = now_s();
    bool open = true;

    while (open && !g_stop) {
        // A chunk of simulation between socket polls.
        for (int i = 0; i < 512; ++i) {
            bool sys_edge = next_sys <= next_core;
            t = sys_edge ? next_sys : next_core;
            if (next_core == t) {
                top->core_clk = !top->core_clk;
                next_core += core_half;
            }
            if (next_sys == t) {
                bool rising = !top->sys_clk;
                if (rising) {
                    // Handshakes complete at this edge with the values settled before it.
                    if (top->serial_sink_valid && top->serial_sink_ready) to_soc.pop_front();
                    if (top->serial_source_valid && top->serial_source_ready)
                        from_soc.push_back(top->serial_source_data);
                }
                top->sys_clk = rising;
                next_sys += sys_half;
                if (rising) {
                    ++sys_cycles;
                    if (sys_cycles == 16) top->sys_rst = 0;
                }
            }
            top->eval();
            if (top->sys_clk) {
                top->serial_sink_valid = !to_soc.empty();
                top->serial_sink_data = to_soc.empty() ? 0 : to_soc.front();
            }
        }
        // Socket: send what the SoC produced, take what the host sent.
        if (!from_soc.empty()) {
            size_t off = 0;
            while (off < from_soc.size()) {
                ssize_t n = send(fd, from_soc.data() + off, from_soc.size() - off, 0);
                if (n < 0) {
                    if (errno == EINTR) continue;
                    open = false;
                    break;
                }
                off += n;
            }
            from_soc.clear();
            last_traffic = now_s();
        }
        bool idle = to_soc.empty() && now_s() - last_traffic > 2.0;
        pollfd p{fd, POLLIN, 0};
        // When nothing has moved for a while, wait for the host instead of spinning.
        if (poll(&p, 1, idle ? 20 : 0) > 0) {
            ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n == 0) {
                open = false;
            } else if (n > 0) {
                to_soc.insert(to_soc.end(), buf, buf + n);
                last_traffic = now_s();
            } else if (errno != EAGAIN && errno != EINTR) {
                open = false;
            }
        }
    }
    top->final();
    close(fd);
    return 0;
}
