// Optional niceties only: the console works the same with JavaScript off.
// Mark that scripts run (the browser test checks it to know JavaScript is on or off).
document.documentElement.classList.add("js");
// Ask before rejecting a plan.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form.reject").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm("Reject this plan?")) { ev.preventDefault(); }
    });
  });
});
