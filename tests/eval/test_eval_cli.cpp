// `medvision eval` on the command line: pairing by file name, missing and invalid predictions, reports,
// and clear errors for bad usage and bad input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "../cli/run_cli.hpp"
#include "core/file.hpp"
#include "extract/schema.hpp"

using mv::testing::run_cli;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json truth_doc(const std::string& id, const std::string& type) {
  json t = json::parse(R"({
    "schema_version": "1.0", "document_type": "prescription",
    "patient": {"name": "Test Patient", "sex": "female"},
    "medications": [{"name": "Amoxicillin", "strength": "500 mg", "route": "PO", "frequency": "q8h"},
                    {"name": "Ibuprofen", "strength": "400 mg", "route": "PO", "frequency": "q6h", "prn": true}],
    "labs": [], "diagnoses": [], "vitals": [], "allergies": [], "procedures": [], "immunizations": [],
    "followups": [], "terms": ["Amoxicillin", "Ibuprofen"], "values": ["500 mg", "400 mg"]
  })");
  t["document_id"] = id;
  t["document_type"] = type;
  return t;
}

struct Fixture {
  fs::path dir, truth, pred;
  Fixture() {
    dir = fs::temp_directory_path() / ("mv_eval_cli_" + std::to_string(::getpid()) + "_" +
                                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    truth = dir / "truth";
    pred = dir / "pred";
    fs::create_directories(truth);
    fs::create_directories(pred);
    json manifest = {{"documents", json::array()}};
    const char* ids[] = {"doc_a", "doc_b", "doc_c", "doc_d"};
    const char* degr[] = {"none", "fax", "scan", "none"};
    for (int i = 0; i < 4; ++i) {
      const json t = truth_doc(ids[i], "prescription");
      mv::write_file(truth / (std::string(ids[i]) + ".json"), t.dump());
      manifest["documents"].push_back({{"id", ids[i]},
                                       {"type", "prescription"},
                                       {"degrade", degr[i]},
                                       {"truth", std::string(ids[i]) + ".json"},
                                       {"file", std::string(ids[i]) + ".png"}});
    }
    mv::write_file(truth / "manifest.json", manifest.dump());
    // doc_a: perfect; doc_b: wrong magnitude; doc_c: missing; doc_d: breaks the schema.
    json a = mv::extract::strip_provenance(truth_doc("doc_a", "prescription"));
    a.erase("terms"), a.erase("values");
    mv::write_file(pred / "doc_a.json", a.dump());
    json b = a;
    b["document_id"] = "doc_b";
    b["medications"][0]["strength"] = "5000 mg";
    mv::write_file(pred / "doc_b.json", b.dump());
    json d = a;
    d["patient"]["sex"] = "SECRETVALUE";  // not in the enum; must never be echoed
    mv::write_file(pred / "doc_d.json", d.dump());
    mv::write_file(pred / "stray.json", a.dump());
  }
  ~Fixture() { fs::remove_all(dir); }
};

}  // namespace

TEST(EvalCli, ScoresPairsByNameAndListsFailures) {
  Fixture f;
  const fs::path out = f.dir / "report.json", md = f.dir / "report.md";
  const auto r = run_cli("eval --truth " + f.truth.string() + " --pred " + f.pred.string() + " --json " +
                         out.string() + " --markdown " + md.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("2 of 4 documents have no usable prediction"), std::string::npos) << r.err;
  const json j = json::parse(mv::read_file(out));
  EXPECT_EQ(j["overall"]["documents"], 4);
  EXPECT_EQ(j["overall"]["missing"], 1);
  EXPECT_EQ(j["overall"]["invalid"], 1);
  ASSERT_EQ(j["failures"].size(), 2u);
  EXPECT_EQ(j["failures"][0]["id"], "doc_c");
  EXPECT_EQ(j["failures"][0]["status"], "missing");
  EXPECT_EQ(j["failures"][1]["id"], "doc_d");
  EXPECT_EQ(j["failures"][1]["status"], "invalid");
  EXPECT_NE(j["failures"][1]["error"].get<std::string>().find("patient.sex"), std::string::npos);
  EXPECT_EQ(j["unmatched_predictions"], json::array({"stray.json"}));
  // doc_a perfect, doc_b one wrong strength.
  EXPECT_DOUBLE_EQ(j["documents"][0]["fields"]["f1"].get<double>(), 1.0);
  EXPECT_EQ(j["documents"][1]["fields"]["fp"], 1);
  EXPECT_EQ(j["documents"][1]["fields"]["fn"], 1);
  EXPECT_EQ(j["fields"]["medications.strength"]["tp"], 3);
  EXPECT_EQ(j["by_degradation"]["fax"]["documents"], 1);
  EXPECT_EQ(j["by_type"]["prescription"]["documents"], 4);
  // Nothing of the documents' content in the reports.
  const std::string all = mv::read_file(out) + mv::read_file(md) + r.out + r.err;
  EXPECT_EQ(all.find("SECRETVALUE"), std::string::npos);
  EXPECT_EQ(all.find("Amoxicillin"), std::string::npos);
  EXPECT_NE(mv::read_file(md).find("## Summary"), std::string::npos);
  // --strict turns missing/invalid predictions into a failing exit status.
  const auto s = run_cli("eval --strict --truth " + f.truth.string() + " --pred " + f.pred.string());
  EXPECT_EQ(s.exit_code, 3);
  EXPECT_NE(s.out.find("## Summary"), std::string::npos);  // the report still goes to stdout
}

TEST(EvalCli, JsonWithoutPathWritesTheBenchmarkFile) {
  Fixture f;
  const std::string cmd = "cd " + f.dir.string() + " && " + std::string(MV_BINARY) +
                          " eval --truth truth --pred pred --json >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_TRUE(fs::exists(f.dir / "benchmarks" / "evaluation.json"));
}

TEST(EvalCli, BadUsageAndBadInputGiveClearErrors) {
  Fixture f;
  auto r = run_cli("eval");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--truth DIR --pred DIR"), std::string::npos) << r.err;
  r = run_cli("eval --data " + f.truth.string() + " --backend magic");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("ocr or vlm"), std::string::npos) << r.err;
  r = run_cli("eval --data " + f.truth.string() + " --backend ocr --adapter " + f.dir.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--adapter applies to --backend vlm only"), std::string::npos) << r.err;
  r = run_cli("eval --truth " + (f.dir / "nope").string() + " --pred " + f.pred.string());
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  // A broken ground-truth file stops the run and is named.
  mv::write_file(f.truth / "doc_b.json",
                 "{\"schema_version\": \"1.0\", \"document_type\": \"prescription\", oops");
  r = run_cli("eval --truth " + f.truth.string() + " --pred " + f.pred.string());
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("doc_b.json"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not valid JSON"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("oops"), std::string::npos) << r.err;
  // An empty truth folder.
  const fs::path empty = f.dir / "empty";
  fs::create_directories(empty);
  r = run_cli("eval --truth " + empty.string() + " --pred " + f.pred.string());
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("no ground-truth documents"), std::string::npos) << r.err;
}
