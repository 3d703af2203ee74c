// Plain Verilator C++ loop over the qsim accelerator: the baseline that `qsim bench cosim`
// compares the cocotb co-simulation with. It loads the memories through VPI (the same
// backdoor the cocotb testbench uses), pulses start, toggles the clock in a tight loop until
// done, and prints the counters and the wall time of the run as one JSON object.
//
// usage: qsim_native JOBDIR TIMEOUT_CYCLES
//   JOBDIR/job.txt     one request per line, "load MEMORY FILE" before the run or
//                      "read MEMORY WORDS FILE" after done (MEMORY: the instance name)
//   FILE               one hexadecimal word per line, from address 0
// The counters printed are the top's counter ports, listed in the generated qsim_counters.h
// (from qsim.hw.COUNTERS).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "Vqsim_top.h"
#include "qsim_counters.h"
#include "verilated.h"
#include "verilated_vpi.h"

namespace {

// Hex text <-> VPI vector values (32-bit chunks, least significant first).
std::vector<s_vpi_vecval> to_vecval(const std::string& hex, int width) {
    std::vector<s_vpi_vecval> out((width + 31) / 32, s_vpi_vecval{0, 0});
    int bit = 0;
    for (auto it = hex.rbegin(); it != hex.rend() && bit < width; ++it, bit += 4) {
        char c = *it;
        uint32_t nibble = (c >= '0' && c <= '9') ? c - '0' : (c | 0x20) - 'a' + 10;
        out[bit / 32].aval |= nibble << (bit % 32);
    }
    return out;
}

std::string from_vecval(const s_vpi_vecval* words, int width) {
    static const char digits[] = "0123456789abcdef";
    std::string hex;
    for (int bit = ((width + 3) / 4 - 1) * 4; bit >= 0; bit -= 4) {
        hex.push_back(digits[(words[bit / 32].aval >> (bit % 32)) & 0xf]);
    }
    return hex;
}

vpiHandle memory(const char* name) {
    std::string path = std::string("TOP.qsim_top.") + name + ".mem";
    vpiHandle h = vpi_handle_by_name(const_cast<char*>(path.c_str()), nullptr);
    if (!h) {
        std::fprintf(stderr, "qsim_native: no memory %s\n", path.c_str());
        std::exit(2);
    }
    return h;
}

void load(const std::string& path, const std::string& name) {
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "qsim_native: cannot read %s\n", path.c_str());
        std::exit(2);
    }
    vpiHandle mem = memory(name.c_str());
    std::string line;
    int address = 0;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        vpiHandle word = vpi_handle_by_index(mem, address++);
        int width = vpi_get(vpiSize, word);
        std::vector<s_vpi_vecval> value = to_vecval(line, width);
        s_vpi_value v;
        v.format = vpiVectorVal;
        v.value.vector = value.data();
        vpi_put_value(word, &v, nullptr, vpiNoDelay);
    }
}

void dump(const std::string& path, const std::string& name, long words) {
    std::ofstream out(path);
    vpiHandle mem = memory(name.c_str());
    for (long address = 0; address < words; ++address) {
        vpiHandle word = vpi_handle_by_index(mem, address);
        s_vpi_value v;
        v.format = vpiVectorVal;
        vpi_get_value(word, &v);
        out << from_vecval(v.value.vector, vpi_get(vpiSize, word)) << "\n";
    }
}

struct Request {
    std::string kind, memory, file;
    long words = 0;
};

std::vector<Request> read_job(const std::string& dir) {
    std::ifstream in(dir + "/job.txt");
    if (!in) {
        std::fprintf(stderr, "qsim_native: no %s/job.txt\n", dir.c_str());
        std::exit(2);
    }
    std::vector<Request> out;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        Request r;
        if (!(fields >> r.kind >> r.memory)) continue;
        if (r.kind == "read") fields >> r.words;
        fields >> r.file;
        out.push_back(r);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s JOBDIR TIMEOUT_CYCLES\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const long timeout = std::stol(argv[2]);
    const std::vector<Request> job = read_job(dir);

    auto context = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vqsim_top>(context.get());
    auto tick = [&]() {
        top->clk = 1;
        top->eval();
        context->timeInc(1);
        top->clk = 0;
        top->eval();
        context->timeInc(1);
    };

    top->clk = 0;
    top->rst = 1;
    top->start = 0;
    top->eval();
    tick();
    tick();
    top->rst = 0;

    for (const Request& r : job) {
        if (r.kind == "load") load(dir + "/" + r.file, r.memory);
    }
    top->eval();

    top->start = 1;
    tick();
    top->start = 0;
    const auto t0 = std::chrono::steady_clock::now();
    long waited = 0;
    while (!top->done && waited <= timeout) {
        tick();
        ++waited;
    }
    const auto t1 = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(t1 - t0).count();

    for (const Request& r : job) {
        if (r.kind == "read") dump(dir + "/" + r.file, r.memory, r.words);
    }

    std::printf("{\"done\": %d, \"error\": %d, \"sim_s\": %.6f", int(top->done), int(top->error),
                seconds);
#define QSIM_PRINT_COUNTER(name) \
    std::printf(", \"" #name "\": %llu", (unsigned long long)top->name);
    QSIM_COUNTERS(QSIM_PRINT_COUNTER)
#undef QSIM_PRINT_COUNTER
    std::printf("}\n");
    top->final();
    return 0;
}
