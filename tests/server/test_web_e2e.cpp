// The web page end to end: headless Chromium driven by playwright-core (tests/server/web_e2e.mjs) against a
// server on a loopback port with the OCR backend. Skips when node, chromium or playwright-core is missing
// (scripts/setup.sh installs all three).
#include <gtest/gtest.h>
#include <httplib.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "core/file.hpp"
#include "data/synth.hpp"
#include "server/server.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

fs::path find_playwright() {
  std::vector<fs::path> roots;
  if (const char* c = std::getenv("MEDVISION_CACHE")) roots.emplace_back(c);
  if (const char* h = std::getenv("HOME")) roots.push_back(fs::path(h) / ".cache" / "medvision");
  for (const auto& r : roots) {
    const fs::path p = r / "playwright" / "node_modules" / "playwright-core";
    if (fs::exists(p / "package.json")) return p;
  }
  return {};
}

fs::path find_chromium() {
  if (const char* c = std::getenv("CHROMIUM"); c && fs::exists(c)) return c;
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser"})
    if (fs::exists(p)) return p;
  return {};
}

std::string run_capture(const std::string& cmd, int& status) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) {
    status = -1;
    return out;
  }
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  status = ::pclose(f);
  return out;
}

}  // namespace

TEST(WebE2E, ExtractionTabDrawsBoxesAndDownloads) {
  const fs::path playwright = find_playwright(), chromium = find_chromium();
  if (playwright.empty() || chromium.empty() || std::system("node --version >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs node, chromium and playwright-core (scripts/setup.sh installs them)";

  const fs::path dir = fs::temp_directory_path() / ("mv_web_e2e_" + std::to_string(::getpid()));
  fs::create_directories(dir / "downloads");
  mv::synth::SynthOptions so;
  so.out_dir = dir / "synth";
  so.count = 1;
  so.seed = 11;
  so.types = {"lab_results"};
  so.threads = 1;
  mv::synth::run_synth(so);
  fs::path doc;
  for (const auto& e : fs::directory_iterator(so.out_dir))
    if (e.path().extension() == ".png") doc = e.path();
  ASSERT_FALSE(doc.empty());
  fs::create_directories(dir / "bench");
  mv::write_file(dir / "bench" / "environment.json", R"({"machine": "e2e"})");
  const std::string key = "e2e-key-abcdefghijklmnop";
  mv::write_file(dir / "keys.txt", key + "\n");

  mv::server::ServerOptions o;
  o.port = 0;
  o.backend = "ocr";
  o.max_batch = 1;
  o.threads = 1;
  o.benchmarks_dir = dir / "bench";
  o.api_keys_file = dir / "keys.txt";
  mv::server::Server server(o);
  const int port = server.bind();
  std::thread t([&] { server.run(); });

  const fs::path shot = dir / "extraction.png";
  const std::string cmd = "PLAYWRIGHT_CORE='" + playwright.string() + "' CHROMIUM='" + chromium.string() +
                          "' node '" + std::string(MV_FIXTURES_DIR) +
                          "/../server/web_e2e.mjs' 'http://127.0.0.1:" + std::to_string(port) + "/' '" +
                          doc.string() + "' '" + shot.string() + "' '" + (dir / "downloads").string() +
                          "' '" + key + "' 2>&1";
  int status = 0;
  const std::string out = run_capture(cmd, status);
  server.stop();
  t.join();
  ASSERT_EQ(status, 0) << out;
  json s = json::parse(out.substr(out.find("{\"errors\"")), nullptr, false);
  ASSERT_FALSE(s.is_discarded()) << out;
  EXPECT_TRUE(s["errors"].empty()) << s.dump(2);
  EXPECT_EQ(s["title"], "MedVision");
  EXPECT_EQ(s["document_type"], "lab results");

  // The downloaded JSON is the extraction the page showed: one row per item and patient/encounter field.
  const json ex = json::parse(mv::read_file(s["download_json"].get<std::string>()));
  std::size_t expected_rows = 0;
  for (const char* sec : {"diagnoses", "medications", "labs", "vitals", "allergies", "procedures",
                          "immunizations", "followups"})
    expected_rows += ex[sec].size();
  for (const char* obj : {"patient", "encounter"})
    if (ex.contains(obj))
      for (auto it = ex[obj].begin(); it != ex[obj].end(); ++it)
        if (it.key() != "provenance") ++expected_rows;
  EXPECT_EQ(s["rows"].size(), expected_rows);
  ASSERT_FALSE(ex["labs"].empty());
  bool found_lab = false;
  for (const auto& row : s["rows"])
    if (row["section"] == "labs" && row["label"] == ex["labs"][0]["test"]) found_lab = true;
  EXPECT_TRUE(found_lab) << "first lab test not listed";
  // Each lab's box is drawn where the extraction puts it on the page (as fractions of the page, within 1%;
  // the border is 2 px wide).
  const double pw = ex["pages"][0]["width"], ph = ex["pages"][0]["height"];
  std::size_t lab = 0, checked = 0;
  for (const auto& row : s["rows"]) {
    if (row["section"] != "labs") continue;
    const auto& bbox = ex["labs"][lab++]["provenance"]["bbox"];
    for (const auto& placed : s["placed"]) {
      if (placed["field"] != row["field"]) continue;
      const double want[4] = {bbox[0].get<double>() / pw, bbox[1].get<double>() / ph,
                              bbox[2].get<double>() / pw, bbox[3].get<double>() / ph};
      for (int k = 0; k < 4; ++k) EXPECT_NEAR(placed["rel"][k].get<double>(), want[k], 0.01) << row.dump();
      ++checked;
    }
  }
  EXPECT_EQ(checked, ex["labs"].size());
  // Every box lies on the page image; hovering a row highlights its box.
  EXPECT_GT(s["boxes"].get<int>(), 0);
  EXPECT_EQ(s["inside"], s["boxes"]);
  EXPECT_EQ(s["highlighted"], 1);
  const json fhir = json::parse(mv::read_file(s["download_fhir"].get<std::string>()));
  EXPECT_EQ(fhir["resourceType"], "Bundle");
  EXPECT_EQ(s["benchmarks"], json::array({"environment.json"}));
  EXPECT_NE(s["analyze_status"].get<std::string>().find("503"), std::string::npos);
  // The only failed load is that intended 503.
  ASSERT_EQ(s["failed_loads"].size(), 1u) << s["failed_loads"].dump();
  EXPECT_NE(s["failed_loads"][0].get<std::string>().find("503"), std::string::npos);
  // The screenshot is a PNG.
  const std::string png = mv::read_file(shot);
  ASSERT_GT(png.size(), 1000u);
  EXPECT_EQ(png.substr(1, 3), "PNG");
  if (!std::getenv("MV_KEEP_E2E")) fs::remove_all(dir);
}
