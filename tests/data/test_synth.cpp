// medvision synth: determinism, schema validity, boxes, flags that follow values and ranges, every type,
// --types, degradations moving boxes with the text, training export, and errors for bad arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#include "../cli/run_cli.hpp"
#include "common/expect_error.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "data/clinical_tables.hpp"
#include "data/synth.hpp"
#include "data/synth_case.hpp"
#include "data/synth_degrade.hpp"
#include "data/synth_documents.hpp"
#include "extract/schema.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mv;
using namespace mv::synth;
using mv::test::expect_error;

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("mv_synth_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p;
}

const ClinicalTables& tables() {
  static const ClinicalTables t = ClinicalTables::load(data_dir() / "clinical");
  return t;
}

std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out[e.path().filename().string()] = read_file(e.path());
  return out;
}

// One run of every type with mixed degradations, shared by several tests (rendering is the slow part).
struct SharedRun {
  fs::path dir;
  json manifest;
  SharedRun() {
    dir = temp_dir("shared");
    SynthOptions o;
    o.out_dir = dir;
    o.count = 26;
    o.seed = 11;
    o.degrade = "mixed";
    o.threads = 2;
    run_synth(o);
    manifest = json::parse(read_file(dir / "manifest.json"));
  }
  ~SharedRun() { fs::remove_all(dir); }
};

const SharedRun& shared_run() {
  static const SharedRun run;
  return run;
}

std::vector<json> truths() {
  std::vector<json> out;
  for (const auto& d : shared_run().manifest["documents"])
    out.push_back(json::parse(read_file(shared_run().dir / d["truth"].get<std::string>())));
  return out;
}

// ---- tables and rules ------------------------------------------------------------------------------------

TEST(ClinicalTables, LoadAndCrossReference) {
  const auto& t = tables();
  EXPECT_GE(t.drugs.size(), 80u);
  EXPECT_GE(t.labs.size(), 60u);
  EXPECT_GE(t.diagnoses.size(), 100u);
  EXPECT_GE(t.vaccines.size(), 10u);
  EXPECT_EQ(t.lab("hgb").range_for("female").low, 12.0);
  EXPECT_EQ(t.lab("hgb").range_for("male").low, 13.5);
  EXPECT_EQ(t.lab("k").loinc, "2823-3");
  for (const auto& d : t.diagnoses)
    EXPECT_TRUE(std::isupper(static_cast<unsigned char>(d.icd10[0]))) << d.text;
  for (const auto& d : t.drugs) {
    for (const auto& r : d.routes) EXPECT_TRUE(t.routes.count(r)) << d.name;
    for (const auto& f : d.frequencies) EXPECT_TRUE(t.frequencies.count(f)) << d.name;
  }
}

TEST(ClinicalTables, BadTableNamesFileAndEntry) {
  const fs::path dir = temp_dir("badtables");
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(data_dir() / "clinical"))
    fs::copy(e.path(), dir / e.path().filename());
  std::string drugs = read_file(dir / "drugs.json");
  const auto pos = drugs.find("\"routes\": [\"PO\"]");
  ASSERT_NE(pos, std::string::npos);
  drugs.replace(pos, 16, "\"routes\": [\"XX\"]");
  write_file(dir / "drugs.json", drugs);
  try {
    ClinicalTables::load(dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("drugs.json: drugs[0]: unknown route code \"XX\""),
              std::string::npos)
        << e.what();
  }
  write_file(dir / "labs.json", "{not json");
  EXPECT_THROW(ClinicalTables::load(dir), Error);
  EXPECT_THROW(ClinicalTables::load(dir / "missing"), Error);
  fs::remove_all(dir);
}

TEST(ClinicalTables, FlagRules) {
  LabTest k = tables().lab("k");  // 3.5-5.1, critical 2.8 / 6.2
  const RangeSpec r = k.range_for("female");
  EXPECT_EQ(lab_flag(k, r, 3.5), "N");
  EXPECT_EQ(lab_flag(k, r, 5.1), "N");
  EXPECT_EQ(lab_flag(k, r, 3.4), "L");
  EXPECT_EQ(lab_flag(k, r, 2.7), "LL");
  EXPECT_EQ(lab_flag(k, r, 5.2), "H");
  EXPECT_EQ(lab_flag(k, r, 6.3), "HH");
  const LabTest& chol = tables().lab("chol");  // <200
  EXPECT_EQ(lab_flag(chol, chol.range, 199), "N");
  EXPECT_EQ(lab_flag(chol, chol.range, 200), "H");
  const LabTest& hdl = tables().lab("hdl");  // >40
  EXPECT_EQ(lab_flag(hdl, hdl.range, 40), "L");
  EXPECT_EQ(lab_flag(hdl, hdl.range, 41), "N");
  EXPECT_EQ(range_text(r, 1), "3.5-5.1");
  EXPECT_EQ(range_text(chol.range, 0), "<200");
  EXPECT_EQ(range_text(tables().lab("be").range, 1), "-2.0 to 2.0");
  EXPECT_EQ(format_fixed(-0.0001, 2), "0.00");
  EXPECT_EQ(dose_from_strength("40 mg/0.4 mL"), (std::pair<std::string, std::string>{"40", "mg"}));
  EXPECT_EQ(dose_from_strength("5,000 units/mL"), (std::pair<std::string, std::string>{"5,000", "units"}));
}

TEST(ClinicalTables, GeneratedLabValuesFollowTheirFlags) {
  Rng rng(3);
  CaseGen gen(tables(), rng);
  std::map<std::string, int> seen;
  for (int i = 0; i < 4000; ++i) {
    const LabTest& t = tables().labs[static_cast<std::size_t>(i) % tables().labs.size()];
    const std::string sex = i % 2 ? "female" : "male";
    const LabResult r = gen.lab(t, sex, 0.5);
    ++seen[r.flag];
    if (t.qualitative) {
      EXPECT_EQ(r.flag == "A", r.value != t.normal_result) << t.id;
      continue;
    }
    double v = 0;
    if (r.value[0] == '<' || r.value[0] == '>') {
      v = std::stod(r.value.substr(1)) + (r.value[0] == '<' ? -1e-6 : 1e-6);
    } else {
      v = std::stod(r.value);
    }
    EXPECT_EQ(r.flag, lab_flag(t, t.range_for(sex), v)) << t.id << " " << r.value;
  }
  for (const char* f : {"N", "H", "L", "HH", "LL", "A"}) EXPECT_GT(seen[f], 0) << f;
}

// ---- rendering -------------------------------------------------------------------------------------------

TEST(Synth, EveryTypeRendersAndValidates) {
  const auto& run = shared_run();
  std::set<std::string> types;
  for (const auto& d : run.manifest["documents"]) {
    types.insert(d["type"].get<std::string>());
    const std::string file = d["file"];
    const std::string bytes = read_file(run.dir / file);
    if (d["pages"] == 1 && file.substr(file.size() - 4) == ".jpg") {
      EXPECT_TRUE(d["degrade"] == "scan" || d["degrade"] == "photo") << file;
      EXPECT_EQ(bytes.substr(0, 3), "\xFF\xD8\xFF");
    } else if (d["pages"] == 1) {
      EXPECT_EQ(file.substr(file.size() - 4), ".png");
      EXPECT_EQ(bytes.substr(1, 3), "PNG");
    } else {
      EXPECT_EQ(file.substr(file.size() - 4), ".pdf");
      EXPECT_EQ(bytes.substr(0, 5), "%PDF-");
    }
  }
  EXPECT_EQ(types.size(), synth_types().size());
  int with_values = 0;
  for (const auto& t : truths()) {
    const auto errors = extract::validate_extraction(t);
    EXPECT_TRUE(errors.empty()) << t["document_id"] << ": " << (errors.empty() ? "" : errors[0]);
    EXPECT_EQ(t["schema_version"], "1.0");
    ASSERT_TRUE(t.contains("terms")) << t["document_id"];
    EXPECT_FALSE(t["terms"].empty()) << t["document_id"];
    // A document may print no coded value at all (a pathology report whose diagnosis carries no ICD-10
    // code); the key is then left out. When present, every value is a non-empty string.
    if (t.contains("values")) {
      EXPECT_FALSE(t["values"].empty()) << t["document_id"];
      for (const auto& v : t["values"]) EXPECT_TRUE(v.is_string() && !v.get<std::string>().empty());
      ++with_values;
    }
    EXPECT_TRUE(t.contains("patient")) << t["document_id"];
  }
  // Nearly every type prints coded values (codes, doses, lab values, vitals, lots).
  EXPECT_GE(with_values, static_cast<int>(truths().size()) - 3);
}

// Calls fn(item, list name) for every item with content in a truth.
template <typename Fn>
void each_item(const json& t, Fn fn) {
  if (t.contains("patient")) fn(t["patient"], std::string("patient"));
  if (t.contains("encounter")) fn(t["encounter"], std::string("encounter"));
  for (const char* list : {"diagnoses", "medications", "labs", "vitals", "allergies", "procedures",
                           "immunizations", "followups"})
    for (const auto& item : t[list]) fn(item, std::string(list));
}

TEST(Synth, EveryFieldHasABoxInsideItsPage) {
  int items = 0;
  for (const auto& t : truths()) {
    const auto& pages = t["pages"];
    each_item(t, [&](const json& item, const std::string& list) {
      ++items;
      ASSERT_TRUE(item.contains("provenance")) << t["document_id"] << " " << list;
      const auto& p = item["provenance"];
      EXPECT_EQ(p["source"], "synth");
      const int page = p["page"];
      ASSERT_GE(page, 1);
      ASSERT_LE(page, static_cast<int>(pages.size()));
      const double w = pages[page - 1]["width"], h = pages[page - 1]["height"];
      std::set<std::string> fields, boxed;
      for (const auto& [k, v] : item.items())
        if (k != "provenance") fields.insert(k);
      for (const auto& [k, box] : p["fields"].items()) {
        boxed.insert(k);
        const double x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
        EXPECT_LE(x0, x1);
        EXPECT_LE(y0, y1);
        EXPECT_GE(x0, 0);
        EXPECT_GE(y0, 0);
        EXPECT_LE(x1, w);
        EXPECT_LE(y1, h);
        // The item's box holds every field box.
        EXPECT_LE(p["bbox"][0].get<double>(), x0 + 1e-6);
        EXPECT_GE(p["bbox"][3].get<double>(), y1 - 1e-6);
      }
      EXPECT_EQ(fields, boxed) << t["document_id"] << " " << list;
    });
  }
  EXPECT_GT(items, 300);
}

TEST(Synth, UndegradedBoxesCoverInk) {
  // Render undegraded one-page documents and check there is dark ink inside every field box.
  const fs::path dir = temp_dir("ink");
  SynthOptions o;
  o.out_dir = dir;
  o.count = 13;
  o.seed = 5;
  o.threads = 2;
  run_synth(o);
  const json manifest = json::parse(read_file(dir / "manifest.json"));
  int checked = 0;
  for (const auto& d : manifest["documents"]) {
    if (d["pages"] != 1) continue;
    int w = 0, h = 0, n = 0;
    unsigned char* px = stbi_load((dir / d["file"].get<std::string>()).string().c_str(), &w, &h, &n, 1);
    ASSERT_NE(px, nullptr);
    const json t = json::parse(read_file(dir / d["truth"].get<std::string>()));
    each_item(t, [&](const json& item, const std::string&) {
      for (const auto& [field, box] : item["provenance"]["fields"].items()) {
        int dark = 0;
        for (int y = static_cast<int>(box[1].get<double>()); y < static_cast<int>(box[3].get<double>()); ++y)
          for (int x = static_cast<int>(box[0].get<double>()); x < static_cast<int>(box[2].get<double>());
               ++x)
            dark += px[y * w + x] < 128 ? 1 : 0;
        EXPECT_GT(dark, 3) << d["id"] << " field " << field;
        ++checked;
      }
    });
    stbi_image_free(px);
  }
  EXPECT_GT(checked, 100);
  fs::remove_all(dir);
}

TEST(Synth, LabFlagsFollowValuesAndPrintedRanges) {
  int numeric = 0;
  for (const auto& t : truths()) {
    for (const auto& lab : t["labs"]) {
      const std::string value = lab["value"];
      const std::string flag = lab.value("flag", "N");
      const LabTest* test = tables().find_lab_by_name(lab["test"].get<std::string>());
      if (test == nullptr) {  // narrative names are capitalised long names
        for (const auto& l : tables().labs)
          if (l.long_name.size() == lab["test"].get<std::string>().size() &&
              std::equal(l.long_name.begin(), l.long_name.end(), lab["test"].get<std::string>().begin(),
                         [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
            test = &l;
      }
      ASSERT_NE(test, nullptr) << lab["test"];
      if (test->qualitative) {
        EXPECT_EQ(flag == "A", value != test->normal_result) << lab;
        continue;
      }
      double v = value[0] == '<'   ? std::stod(value.substr(1)) - 1e-6
                 : value[0] == '>' ? std::stod(value.substr(1)) + 1e-6
                                   : std::stod(value);
      if (!lab.contains("reference_range")) {
        EXPECT_NE(flag, "N") << "narrative labs are quoted because they are abnormal: " << lab;
        continue;
      }
      // Parse the printed range: "lo-hi", "lo to hi", "<hi", ">lo".
      const std::string range = lab["reference_range"];
      std::optional<double> lo, hi;
      if (range[0] == '<')
        hi = std::stod(range.substr(1));
      else if (range[0] == '>')
        lo = std::stod(range.substr(1));
      else if (auto to = range.find(" to "); to != std::string::npos)
        lo = std::stod(range.substr(0, to)), hi = std::stod(range.substr(to + 4));
      else {
        const auto dash = range.find('-', 1);
        ASSERT_NE(dash, std::string::npos) << range;
        lo = std::stod(range.substr(0, dash));
        hi = std::stod(range.substr(dash + 1));
      }
      const bool low = lo && hi ? v < *lo : lo ? v <= *lo : false;
      const bool high = lo && hi ? v > *hi : hi ? v >= *hi : false;
      if (low)
        EXPECT_TRUE(flag == "L" || flag == "LL") << lab;
      else if (high)
        EXPECT_TRUE(flag == "H" || flag == "HH") << lab;
      else
        EXPECT_EQ(flag, "N") << lab;
      if (flag == "LL") EXPECT_TRUE(test->crit_low && v < *test->crit_low) << lab;
      if (flag == "HH") EXPECT_TRUE(test->crit_high && v > *test->crit_high) << lab;
      if (flag == "L") EXPECT_FALSE(test->crit_low && v < *test->crit_low) << lab;
      if (flag == "H") EXPECT_FALSE(test->crit_high && v > *test->crit_high) << lab;
      ++numeric;
    }
  }
  EXPECT_GT(numeric, 100);
}

TEST(Synth, SameSeedSameBytesAnyThreadCount) {
  const fs::path a = temp_dir("det_a"), b = temp_dir("det_b"), c = temp_dir("det_c");
  SynthOptions o;
  o.count = 14;
  o.seed = 99;
  o.degrade = "mixed";
  o.out_dir = a;
  o.threads = 2;
  run_synth(o);
  o.out_dir = b;
  o.threads = 1;
  run_synth(o);
  o.out_dir = c;
  o.seed = 100;
  run_synth(o);
  const auto fa = files_of(a), fb = files_of(b), fc = files_of(c);
  ASSERT_EQ(fa.size(), 14u * 2 + 1);
  ASSERT_EQ(fa.size(), fb.size());
  for (const auto& [name, bytes] : fa) {
    ASSERT_TRUE(fb.count(name)) << name;
    EXPECT_TRUE(bytes == fb.at(name)) << name << " differs between runs with the same seed";
  }
  int differ = 0;
  for (const auto& [name, bytes] : fa)
    if (name != "manifest.json" && (!fc.count(name) || fc.at(name) != bytes)) ++differ;
  EXPECT_EQ(differ, 28) << "another seed must change every document";
  for (const auto& p : {a, b, c}) fs::remove_all(p);
}

TEST(Synth, TypesFilterAndRoundRobin) {
  const fs::path dir = temp_dir("types");
  SynthOptions o;
  o.out_dir = dir;
  o.count = 5;
  o.seed = 1;
  o.types = parse_types("prescription, vaccination_record");
  run_synth(o);
  const json m = json::parse(read_file(dir / "manifest.json"));
  ASSERT_EQ(m["documents"].size(), 5u);
  for (std::size_t i = 0; i < 5; ++i)
    EXPECT_EQ(m["documents"][i]["type"], i % 2 == 0 ? "prescription" : "vaccination_record");
  EXPECT_EQ(m["types"], json::array({"prescription", "vaccination_record"}));
  const json rx = json::parse(read_file(dir / m["documents"][0]["truth"].get<std::string>()));
  EXPECT_FALSE(rx["medications"].empty());
  for (const auto& med : rx["medications"]) EXPECT_TRUE(med.contains("quantity") && med.contains("refills"));
  const json vax = json::parse(read_file(dir / m["documents"][1]["truth"].get<std::string>()));
  EXPECT_GE(vax["immunizations"].size(), 3u);
  fs::remove_all(dir);
}

TEST(Synth, OptionErrors) {
  SynthOptions o;
  o.out_dir = temp_dir("err");
  o.count = 0;
  EXPECT_THROW(run_synth(o), Error);
  o.count = 1;
  o.degrade = "sepia";
  expect_error([&] { run_synth(o); }, Errc::kUsage, "sepia");
  try {
    parse_types("prescription,xray_note");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kUsage);
    EXPECT_NE(std::string(e.what()).find("xray_note"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("pathology_report"), std::string::npos);
  }
  fs::remove_all(o.out_dir);
}

// ---- degradations ----------------------------------------------------------------------------------------

TEST(Degrade, BoxesFollowTheContent) {
  for (const std::string kind : {"scan", "fax", "photo"}) {
    for (int seed = 0; seed < 4; ++seed) {
      ImageRGB8 img;
      img.width = 600;
      img.height = 800;
      img.pixels.assign(static_cast<std::size_t>(img.width) * img.height * 3, 255);
      const extract::BBox box{380, 120, 470, 200};
      for (int y = 120; y < 200; ++y)
        for (int x = 380; x < 470; ++x)
          for (int c = 0; c < 3; ++c) img.row(y)[3 * x + c] = 0;
      Rng rng(static_cast<std::uint64_t>(seed));
      const Homography h = degrade(img, kind, rng);
      const extract::BBox out = transform_box(box, h, img.width, img.height);
      auto lum = [&](int x, int y) { return img.row(y)[3 * x + 1]; };
      double inside = 0, ring = 0;
      int n_in = 0, n_ring = 0;
      for (int y = 0; y < img.height; ++y)
        for (int x = 0; x < img.width; ++x) {
          const bool in = x >= out.x0 + 4 && x < out.x1 - 4 && y >= out.y0 + 4 && y < out.y1 - 4;
          const bool near = x >= out.x0 - 20 && x < out.x1 + 20 && y >= out.y0 - 20 && y < out.y1 + 20;
          const bool outside = x < out.x0 - 6 || x >= out.x1 + 6 || y < out.y0 - 6 || y >= out.y1 + 6;
          if (in)
            inside += lum(x, y), ++n_in;
          else if (near && outside)
            ring += lum(x, y), ++n_ring;
        }
      ASSERT_GT(n_in, 100) << kind;
      EXPECT_LT(inside / n_in, 70) << kind << " seed " << seed << ": the box lost the dark square";
      EXPECT_GT(ring / n_ring, 120) << kind << " seed " << seed << ": the box is too large or misplaced";
    }
  }
}

TEST(Degrade, HomographyFromQuadsMapsCorners) {
  const std::array<double, 8> src = {0, 0, 100, 0, 100, 50, 0, 50};
  const std::array<double, 8> dst = {10, 5, 90, 12, 95, 60, 3, 48};
  const Homography h = Homography::from_quads(src, dst);
  for (int i = 0; i < 4; ++i) {
    double x = 0, y = 0;
    h.apply(src[2 * i], src[2 * i + 1], x, y);
    EXPECT_NEAR(x, dst[2 * i], 1e-9);
    EXPECT_NEAR(y, dst[2 * i + 1], 1e-9);
  }
  double x = 0, y = 0;
  h.then(h.inverse()).apply(37, 21, x, y);
  EXPECT_NEAR(x, 37, 1e-9);
  EXPECT_NEAR(y, 21, 1e-9);
}

TEST(Degrade, JpegRoundTripKeepsSize) {
  ImageRGB8 img;
  img.width = 64;
  img.height = 48;
  img.pixels.assign(64 * 48 * 3, 200);
  jpeg_roundtrip(img, 80);
  EXPECT_EQ(img.width, 64);
  EXPECT_EQ(img.height, 48);
  EXPECT_NEAR(img.pixels[100], 200, 3);
}

// ---- training export and the command line --------------------------------------------------------------

TEST(Synth, ExportTrainingSplits) {
  const fs::path dir = temp_dir("export"), out = temp_dir("export_out");
  SynthOptions o;
  o.out_dir = dir;
  o.count = 20;
  o.seed = 3;
  run_synth(o);
  const auto s = export_training(dir, out);
  EXPECT_EQ(s.train, 16u);
  EXPECT_EQ(s.val, 2u);
  EXPECT_EQ(s.test, 2u);
  std::set<std::string> paths;
  std::size_t lines = 0;
  for (const char* split : {"train.jsonl", "val.jsonl", "test.jsonl"}) {
    std::stringstream ss(read_file(out / split));
    std::string line;
    while (std::getline(ss, line)) {
      const json j = json::parse(line);
      ASSERT_EQ(j.size(), 3u);
      EXPECT_EQ(j["prompt"], training_prompt());
      const fs::path image = out / j["image_path"].get<std::string>();
      EXPECT_TRUE(fs::exists(image)) << image;
      paths.insert(fs::weakly_canonical(image).string());
      const json response = json::parse(j["response"].get<std::string>());
      EXPECT_TRUE(extract::validate_extraction(response).empty());
      EXPECT_FALSE(response.dump().find("provenance") != std::string::npos);
      EXPECT_FALSE(response.contains("pages"));
      ++lines;
    }
  }
  EXPECT_EQ(lines, 20u);
  EXPECT_EQ(paths.size(), 20u) << "a document must be in exactly one split";
  const std::string first = read_file(out / "train.jsonl");
  export_training(dir, out);
  EXPECT_EQ(read_file(out / "train.jsonl"), first) << "the split is fixed by seed 42";
  fs::remove_all(dir);
  fs::remove_all(out);
}

TEST(SynthCli, RendersAndReportsJson) {
  const fs::path dir = temp_dir("cli");
  const auto r = mv::testing::run_cli("-q synth --out " + dir.string() +
                                      " --count 2 --seed 4 --types lab_results --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["documents"], 2);
  EXPECT_EQ(j["by_type"]["lab_results"], 2);
  const auto e = mv::testing::run_cli("-q synth --export-training " + dir.string() + " --json");
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_EQ(json::parse(e.out)["training"]["train"], 1);
  fs::remove_all(dir);
}

TEST(SynthCli, BadArgumentsExitWithUsage) {
  const fs::path dir = temp_dir("cli_bad");
  auto r = mv::testing::run_cli("synth --out " + dir.string() + " --count 2 --types nonsense");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown document type(s) nonsense"), std::string::npos) << r.err;
  r = mv::testing::run_cli("synth --out " + dir.string() + " --count 2 --degrade blurry");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--degrade"), std::string::npos) << r.err;
  r = mv::testing::run_cli("synth --out " + dir.string() + " --count -3");
  EXPECT_EQ(r.exit_code, 2);
  r = mv::testing::run_cli("synth");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--export-training"), std::string::npos) << r.err;
  r = mv::testing::run_cli("synth --count 3");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--out"), std::string::npos) << r.err;
  r = mv::testing::run_cli("synth --export-training " + dir.string() + "_missing");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("manifest.json not found"), std::string::npos) << r.err;
  r = mv::testing::run_cli("synth --out " + dir.string() + " --count abc");
  EXPECT_EQ(r.exit_code, 2);
  fs::remove_all(dir);
}

}  // namespace
