// Plain Verilator C++ loop over the qsim accelerator: the baseline that `qsim bench cosim`
// compares the cocotb co-simulation with. It loads the memories through VPI (the same
// backdoor the cocotb testbench uses), pulses start, toggles the clock in a tight loop until
// done, and prints the counters and the wall time of the run as one JSON object.
//
// usage: qsim_native JOBDIR ACC_WORDS TIMEOUT_CYCLES
//   JOBDIR/{act,weight,acc,cmd}.hex   one hexadecimal word per line, from address 0
//   JOBDIR/acc_out.hex                written: ACC_WORDS accumulator words after done

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "Vqsim_top.h"
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

void load(const std::string& dir, const char* file, const char* name) {
    std::ifstream in(dir + "/" + file);
    if (!in) return;  // nothing to load
    vpiHandle mem = memory(name);
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

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s JOBDIR ACC_WORDS TIMEOUT_CYCLES\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const long acc_words = std::stol(argv[2]);
    const long timeout = std::stol(argv[3]);

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

    load(dir, "act.hex", "act_mem");
    load(dir, "weight.hex", "weight_mem");
    load(dir, "acc.hex", "acc_mem");
    load(dir, "cmd.hex", "cmd_mem");
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

    std::ofstream out(dir + "/acc_out.hex");
    vpiHandle acc = memory("acc_mem");
    for (long address = 0; address < acc_words; ++address) {
        vpiHandle word = vpi_handle_by_index(acc, address);
        s_vpi_value v;
        v.format = vpiVectorVal;
        vpi_get_value(word, &v);
        out << from_vecval(v.value.vector, vpi_get(vpiSize, word)) << "\n";
    }

    std::printf(
        "{\"done\": %d, \"error\": %d, \"sim_s\": %.6f, \"cycles\": %llu, \"act_reads\": %llu, "
        "\"weight_reads\": %llu, \"acc_reads\": %llu, \"acc_writes\": %llu, \"matmuls\": %llu}\n",
        int(top->done), int(top->error), seconds, (unsigned long long)top->cycles,
        (unsigned long long)top->act_reads, (unsigned long long)top->weight_reads,
        (unsigned long long)top->acc_reads, (unsigned long long)top->acc_writes,
        (unsigned long long)top->matmuls);
    top->final();
    return 0;
}
