// moe — a Hugging Face checkpoint directory: config.json plus model.safetensors, or the sharded
// form (model.safetensors.index.json naming one file per tensor).
#pragma once

#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/io/safetensors.hpp"

namespace moe {

namespace detail {
inline nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  MOE_CHECK(in, "cannot open '" << path << "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    MOE_CHECK(false, "'" << path << "' is not valid JSON: " << e.what());
  }
  return {};
}
}  // namespace detail

/// The tensors of a checkpoint directory, wherever they are stored. Shards are memory-mapped once
/// each; tensor names are checked for duplicates across shards and against the index.
class HfCheckpoint {
 public:
  explicit HfCheckpoint(const std::string& dir) : dir_(dir) {
    config_ = detail::read_json_file(dir_ + "/config.json");
    MOE_CHECK(config_.is_object(), "'" << dir_ << "/config.json' must hold a JSON object");
    const std::string single = dir_ + "/model.safetensors", index = single + ".index.json";
    if (std::ifstream(index).good()) {
      const nlohmann::json j = detail::read_json_file(index);
      MOE_CHECK(j.contains("weight_map") && j.at("weight_map").is_object(),
                "'" << index << "' has no \"weight_map\" object");
      std::map<std::string, std::size_t> shard_of_file;
      for (const auto& [name, file] : j.at("weight_map").items()) {
        MOE_CHECK(file.is_string(), "'" << index << "': weight_map[\"" << name << "\"] must be a file name");
        const std::string f = file.get<std::string>();
        MOE_CHECK(f.find('/') == std::string::npos && f.find("..") == std::string::npos,
                  "'" << index << "': shard name '" << f << "' must be a plain file name");
        auto [it, fresh] = shard_of_file.emplace(f, files_.size());
        if (fresh) files_.push_back(std::make_unique<SafeTensorsFile>(dir_ + "/" + f));
        MOE_CHECK(files_[it->second]->contains(name),
                  "'" << index << "' puts tensor '" << name << "' in '" << f << "', which does not hold it");
        where_[name] = it->second;
      }
    } else {
      MOE_CHECK(std::ifstream(single).good(),
                "checkpoint '" << dir_ << "' has neither model.safetensors nor model.safetensors.index.json");
      files_.push_back(std::make_unique<SafeTensorsFile>(single));
      for (const std::string& name : files_[0]->names()) where_[name] = 0;
    }
  }

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  /// All tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& kv : where_) n.push_back(kv.first);
    return n;
  }
  /// The file holding `name`; throws moe::Error naming the tensor and the checkpoint if absent.
  const SafeTensorsFile& file_of(const std::string& name) const {
    const auto it = where_.find(name);
    MOE_CHECK(it != where_.end(), "checkpoint '" << dir_ << "' has no tensor '" << name << "'");
    return *files_[it->second];
  }
  const TensorInfo& info(const std::string& name) const { return file_of(name).info(name); }

 private:
  std::string dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafeTensorsFile>> files_;
  std::map<std::string, std::size_t> where_;
};

}  // namespace moe
