// analyzer: the demo "legacy" batch program wrapped by batchgate.
//
//   analyzer <control-file> <input-file> <output-file>
//
// Reads sensor readings (CSV with the header `sensor,timestamp,value`), applies the rules
// in the control file, and writes insights as CSV (`sensor,kind,name,value,at`):
//   - one `stat` row per sensor and requested statistic (count, mean, min, max, stddev);
//   - one `alert` row each time the moving mean over `window` readings rises above
//     `threshold` (`at` is the timestamp of the reading that crossed it).
//
// Control file: one directive per line, `#` starts a comment.
//   threshold <number>        required
//   window <integer >= 1>     required
//   statistics <name>...      optional, default "count mean max"
//   delay_seconds <integer>   optional: spread this many seconds of sleep over the run,
//                             so that a long job can be watched
//   label <text>              optional: copied into every row's `name` as a prefix
//
// Progress goes to stdout as `PROGRESS <percent> <message>`. Bad input: a message on
// stderr naming the line, and exit status 2 (input) or 3 (control file).

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Rules {
    double threshold = 0;
    bool has_threshold = false;
    long window = 0;
    std::vector<std::string> statistics{"count", "mean", "max"};
    long delay_seconds = 0;
    std::string label;
};

struct Reading {
    std::string sensor;
    std::string timestamp;
    double value;
};

struct SensorStats {
    long count = 0;
    double sum = 0, sum_sq = 0, min = 0, max = 0;
    std::deque<double> recent;
    double recent_sum = 0;
    bool alerting = false;
};

[[noreturn]] void die(int status, const std::string& message) {
    std::cerr << "analyzer: " << message << std::endl;
    std::exit(status);
}

std::string trim(const std::string& text) {
    const char* space = " \t\r\n";
    auto begin = text.find_first_not_of(space);
    if (begin == std::string::npos) return "";
    auto end = text.find_last_not_of(space);
    return text.substr(begin, end - begin + 1);
}

bool parse_number(const std::string& text, double& out) {
    if (text.empty()) return false;
    char* end = nullptr;
    out = std::strtod(text.c_str(), &end);
    return end && *end == '\0' && std::isfinite(out);
}

Rules read_rules(const char* path) {
    std::ifstream file(path);
    if (!file) die(3, std::string("cannot open control file ") + path);
    Rules rules;
    std::string line;
    long number = 0;
    while (std::getline(file, line)) {
        ++number;
        line = trim(line);
        if (line.empty() || line[0] == '#') continue;
        std::istringstream words(line);
        std::string key;
        words >> key;
        std::string rest;
        std::getline(words, rest);
        rest = trim(rest);
        const std::string where = "control file line " + std::to_string(number) + ": ";
        if (key == "threshold") {
            if (!parse_number(rest, rules.threshold)) die(3, where + "threshold must be a number");
            rules.has_threshold = true;
        } else if (key == "window") {
            double window;
            if (!parse_number(rest, window) || window < 1 || window != std::floor(window))
                die(3, where + "window must be an integer >= 1");
            rules.window = static_cast<long>(window);
        } else if (key == "statistics") {
            rules.statistics.clear();
            std::istringstream names(rest);
            std::string name;
            while (names >> name) {
                if (name != "count" && name != "mean" && name != "min" && name != "max" &&
                    name != "stddev")
                    die(3, where + "unknown statistic '" + name + "'");
                rules.statistics.push_back(name);
            }
        } else if (key == "delay_seconds") {
            double delay;
            if (!parse_number(rest, delay) || delay < 0) die(3, where + "bad delay_seconds");
            rules.delay_seconds = static_cast<long>(delay);
        } else if (key == "label") {
            rules.label = rest;
        } else {
            die(3, where + "unknown directive '" + key + "'");
        }
    }
    if (!rules.has_threshold) die(3, "control file: missing 'threshold'");
    if (rules.window < 1) die(3, "control file: missing 'window'");
    return rules;
}

std::vector<std::string> split_csv_line(const std::string& line) {
    // The gateway writes plain CSV; quoted fields are unquoted here for robustness.
    std::vector<std::string> fields;
    std::string field;
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
        char c = line[i];
        if (quoted) {
            if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
                field += '"';
                ++i;
            } else if (c == '"') {
                quoted = false;
            } else {
                field += c;
            }
        } else if (c == '"') {
            quoted = true;
        } else if (c == ',') {
            fields.push_back(field);
            field.clear();
        } else if (c != '\r') {
            field += c;
        }
    }
    fields.push_back(field);
    return fields;
}

std::vector<Reading> read_records(const char* path) {
    std::ifstream file(path);
    if (!file) die(2, std::string("cannot open input file ") + path);
    std::vector<Reading> readings;
    std::string line;
    long number = 0;
    while (std::getline(file, line)) {
        ++number;
        if (trim(line).empty()) continue;
        auto fields = split_csv_line(line);
        if (number == 1) {
            if (fields.size() != 3 || fields[0] != "sensor" || fields[1] != "timestamp" ||
                fields[2] != "value")
                die(2, "input line 1: expected the header sensor,timestamp,value");
            continue;
        }
        const std::string where = "input line " + std::to_string(number) + ": ";
        if (fields.size() != 3) die(2, where + "expected 3 fields, found " + std::to_string(fields.size()));
        Reading reading{fields[0], fields[1], 0};
        if (reading.sensor.empty()) die(2, where + "empty sensor name");
        if (!parse_number(trim(fields[2]), reading.value))
            die(2, where + "value '" + fields[2] + "' is not a number");
        readings.push_back(reading);
    }
    if (number == 0) die(2, "input file is empty (expected a header line)");
    return readings;
}

std::string csv_field(const std::string& text) {
    if (text.find_first_of(",\"\n") == std::string::npos) return text;
    std::string quoted = "\"";
    for (char c : text) {
        if (c == '"') quoted += '"';
        quoted += c;
    }
    return quoted + "\"";
}

std::string format_number(double value) {
    std::ostringstream out;
    out.precision(10);
    out << value;
    return out.str();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) die(64, "usage: analyzer <control-file> <input-file> <output-file>");
    Rules rules = read_rules(argv[1]);
    std::cout << "PROGRESS 0 reading input" << std::endl;
    std::vector<Reading> readings = read_records(argv[2]);

    std::ofstream out(argv[3]);
    if (!out) die(4, std::string("cannot write output file ") + argv[3]);
    out << "sensor,kind,name,value,at\n";

    const std::string prefix = rules.label.empty() ? "" : rules.label + ":";
    std::map<std::string, SensorStats> sensors;
    const size_t steps = 10;
    const auto step_delay = std::chrono::milliseconds(rules.delay_seconds * 1000 / steps);
    size_t next_step = 1;
    for (size_t i = 0; i < readings.size() || next_step <= steps; ++i) {
        if (i < readings.size()) {
            const Reading& reading = readings[i];
            SensorStats& stats = sensors[reading.sensor];
            if (stats.count == 0) stats.min = stats.max = reading.value;
            stats.count++;
            stats.sum += reading.value;
            stats.sum_sq += reading.value * reading.value;
            stats.min = std::min(stats.min, reading.value);
            stats.max = std::max(stats.max, reading.value);
            stats.recent.push_back(reading.value);
            stats.recent_sum += reading.value;
            if (static_cast<long>(stats.recent.size()) > rules.window) {
                stats.recent_sum -= stats.recent.front();
                stats.recent.pop_front();
            }
            double moving_mean = stats.recent_sum / stats.recent.size();
            bool above = moving_mean > rules.threshold;
            if (above && !stats.alerting) {
                out << csv_field(reading.sensor) << ",alert," << csv_field(prefix + "moving_mean_above_threshold")
                    << "," << format_number(moving_mean) << "," << csv_field(reading.timestamp) << "\n";
            }
            stats.alerting = above;
        }
        // Report progress (and sleep, when asked to) at each tenth of the work.
        while (next_step <= steps &&
               (i + 1 >= readings.size() || (i + 1) * steps >= next_step * readings.size())) {
            if (rules.delay_seconds > 0) std::this_thread::sleep_for(step_delay);
            std::cout << "PROGRESS " << next_step * 100 / steps << " analyzed "
                      << std::min(readings.size(), i + 1) << " of " << readings.size() << " readings"
                      << std::endl;
            ++next_step;
        }
        if (i >= readings.size() && next_step > steps) break;
    }

    for (const auto& [sensor, stats] : sensors) {
        double mean = stats.sum / stats.count;
        double variance = std::max(0.0, stats.sum_sq / stats.count - mean * mean);
        for (const std::string& name : rules.statistics) {
            double value = 0;
            if (name == "count") value = stats.count;
            else if (name == "mean") value = mean;
            else if (name == "min") value = stats.min;
            else if (name == "max") value = stats.max;
            else if (name == "stddev") value = std::sqrt(variance);
            out << csv_field(sensor) << ",stat," << csv_field(prefix + name) << "," << format_number(value) << ",\n";
        }
    }
    out.close();
    if (!out) die(4, "writing the output file failed");
    std::cerr << "analyzer: " << readings.size() << " readings, " << sensors.size() << " sensors" << std::endl;
    return 0;
}
